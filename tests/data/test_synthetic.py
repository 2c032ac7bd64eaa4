"""``data/synthetic.py``: seeded synthetic data."""

from __future__ import annotations

import pytest
import torch

from data.synthetic import synthetic_classification, synthetic_regression


# ---------------------------------------------------------------------------- synthetic
def test_synthetic_is_seeded():
    x, y = synthetic_classification(8, (3, 5, 5), 4, seed=3)
    assert x.shape == (8, 3, 5, 5) and x.dtype == torch.uint8 and int(y.max()) < 4
    x2, y2 = synthetic_classification(8, (3, 5, 5), 4, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    xf, _ = synthetic_classification(4, (7,), 2, dtype=torch.float64)
    assert xf.dtype == torch.float64
    a, b = synthetic_regression(5, (6,))
    assert b is a and a.shape == (5, 6) and 0 <= a.min() and a.max() < 1
    _, t = synthetic_regression(5, (6,), (2, 3))
    assert t.shape == (5, 2, 3)
    with pytest.raises(ValueError, match="input_shape"):
        synthetic_classification(2, (3, 0))

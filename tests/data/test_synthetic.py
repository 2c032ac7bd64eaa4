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


def test_registry_synthetic_autoencoder_flag_gives_its_own_targets():
    """``experiment=autoencoder`` sets ``dataset.autoencoder=true`` on any dataset: on synthetic
    data it gives the same inputs-are-targets splits as ``num_classes=None``."""
    from data.registry import synthetic

    flagged = synthetic(6, 4, (5,), num_classes=10, autoencoder=True)
    plain = synthetic(6, 4, (5,), num_classes=None)
    assert flagged.num_classes is None
    assert torch.equal(flagged.train[0], plain.train[0]) and flagged.train[1] is flagged.train[0]

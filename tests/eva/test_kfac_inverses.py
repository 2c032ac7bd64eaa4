"""K-FAC's and FOOF's damped factor inverses: the batched form equals a float64 inverse of each
factor, whatever the mix of sizes and dampings."""

from __future__ import annotations

import pytest
import torch

import eva
from eva import kfac
from tests.helpers import image_batches, make_model, sgd, train_steps


def _factor(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(2 * n, n, generator=gen, dtype=torch.float64)
    return rows.T @ rows / (2 * n)


def _want(f: torch.Tensor, d: float) -> torch.Tensor:
    return torch.linalg.inv(f + d * torch.eye(f.shape[0], dtype=f.dtype))


@pytest.mark.parametrize("dampings", ["tensors", "one float", "floats"])
def test_damped_inverses_equal_each_inverse(dampings: str, monkeypatch) -> None:
    monkeypatch.setitem(kfac.STACKED_INVERSE_MAX, "cpu", 5)  # sizes 6 and 7 go one by one
    sizes = [3, 5, 3, 6, 5, 3, 7, 2]
    factors = [_factor(n, seed) for seed, n in enumerate(sizes)]
    values = {
        "tensors": [0.1 * (i + 1) for i in range(len(sizes))],
        "one float": [0.3] * len(sizes),
        "floats": [0.05 * (i + 1) for i in range(len(sizes))],
    }[dampings]
    given = (
        [torch.tensor(v, dtype=torch.float64) for v in values] if dampings == "tensors" else values
    )
    got = kfac.damped_inverses(factors, given)
    for f, d, inverse in zip(factors, values, got, strict=True):
        torch.testing.assert_close(inverse, _want(f, d), rtol=1e-10, atol=1e-12)
    for f, original in zip(factors, [_factor(n, s) for s, n in enumerate(sizes)], strict=True):
        assert torch.equal(f, original)  # the factors themselves are left undamped


@pytest.mark.parametrize("name", ["kfac", "foof"])
def test_refreshed_inverses_are_those_of_the_damped_factors(name: str) -> None:
    """After a few steps every layer's stored inverse is the float64 inverse of its running
    factor with the damping of Eq. 5 (K-FAC: √γ/π and π√γ) or Eq. 6 (FOOF: γ)."""
    model = make_model()
    optimizer = sgd(model)
    pre = eva.PRECONDITIONERS[name](model, optimizer, update_interval=1)
    train_steps(model, optimizer, pre, image_batches(3))
    for layer in pre.layers:
        state = pre.state[layer.name]
        r = state["a_factor"]
        if name == "foof":
            torch.testing.assert_close(state["r_inv"], _want(r, pre.damping), rtol=1e-9, atol=1e-12)
            continue
        q = state["g_factor"]
        pi = float(kfac.damping_split(q, r))
        root = pre.damping**0.5
        torch.testing.assert_close(state["q_inv"], _want(q, root / pi), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(state["r_inv"], _want(r, root * pi), rtol=1e-9, atol=1e-12)

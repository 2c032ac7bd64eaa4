"""Eva-s (eva/eva_s.py) against explicit float64 matrices.

The reference builds the damped curvature ``C + γI`` of the paper as a dense matrix
(``torch.kron``) from statistics recomputed in ``tests.dense_reference`` and solves with
``torch.linalg.solve``; running averages and refresh intervals are replayed step by step.
"""

from __future__ import annotations

import pytest
import torch

from eva import EvaS
from tests.dense_reference import LAYERS, RecordingNet, Reference, dense_solve, ema, eye, run


def eva_s_reference(xi: float | None, gamma: float) -> Reference:
    """Eq. 22–23 via the dense ``(v vᵀ + γI)⁻¹ g``, ``v = v_1 ⊗ ⋯ ⊗ v_k`` of the weight tensor."""

    def reference(t: int, net: RecordingNet, grads: dict, st: dict) -> dict:
        out = {}
        for n in LAYERS:
            g = grads[n]
            v = torch.ones(1, dtype=g.dtype)
            for i in range(g.dim()):
                mean_i = g.movedim(i, 0).flatten(1).mean(dim=1)
                v = torch.kron(v, ema(st, (n, i), mean_i, xi))
            out[n] = dense_solve(torch.outer(v, v) + gamma * eye(v.numel()), g)
        return out

    return reference


@pytest.mark.parametrize("xi", [None, 0.9])
def test_eva_s_equals_dense(xi: float | None) -> None:
    """Conv weights as 4-D tensors, running sums by default; biases untouched."""
    run(EvaS, eva_s_reference(xi, 0.03), weight_only=True, damping=0.03, running_avg=xi,
        scaling=None)  # fmt: skip


@pytest.mark.parametrize("shape", [(4, 6), (3, 4, 5), (6, 5, 3, 2), (2, 3, 4, 5, 2)])
def test_mode_means_are_the_means_over_all_other_dimensions(shape: tuple[int, ...]) -> None:
    from eva.eva_s import mode_means

    g = torch.randn(*shape, dtype=torch.float64)
    if g.dim() == 4:
        g = g.to(memory_format=torch.channels_last)
    got = mode_means(g)
    assert len(got) == g.dim()
    for i, v in enumerate(got):
        torch.testing.assert_close(v, g.movedim(i, 0).flatten(1).mean(dim=1), rtol=1e-12, atol=0)


def test_eva_s_grafting() -> None:
    run(EvaS, eva_s_reference(None, 0.03), weight_only=True, ref_scaling="graft")


@pytest.mark.parametrize("in_place", [True, False])
def test_eva_s_with_huge_gradients_is_finite_and_exact(in_place: bool, monkeypatch) -> None:
    """Gradients ~1e9 in float32: Π‖v_i‖² of a convolution (~1e70) overflows float32, and
    Eq. 23 as printed gives NaN; the unit-vector form matches the float64 dense solve."""
    from eva.eva_s import mode_means

    if not in_place:  # the reference path, Preconditioner.precondition
        monkeypatch.setattr(EvaS, "in_place_rank_one", False)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    model = torch.nn.Sequential(conv, torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 2))
    pre = EvaS(model, torch.optim.SGD(model.parameters(), lr=0.1), scaling=None)
    model(torch.randn(6, 3, 5, 5)).square().sum().mul(1e7).backward()
    g = conv.weight.grad.double()
    norms = [v.double().square().sum() for v in mode_means(conv.weight.grad)]
    assert not torch.isfinite(torch.stack(norms).float().prod())  # the printed form overflows
    pre.step()
    v = torch.ones(1, dtype=torch.float64)
    for mean in mode_means(g):
        v = torch.kron(v, mean)
    g = g.flatten()  # Sherman–Morrison in float64 (a dense solve is hopeless at cond ~1e72)
    want = (g - v * (v @ g) / (0.03 + v @ v)) / 0.03
    got = conv.weight.grad.double().flatten()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))

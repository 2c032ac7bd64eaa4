"""Eva (eva/eva.py) against explicit float64 matrices.

The reference builds the damped curvature ``C + γI`` of the paper as a dense matrix
(``torch.kron``) from statistics recomputed in ``tests.dense_reference`` and solves with
``torch.linalg.solve``; running averages and refresh intervals are replayed step by step.
"""

from __future__ import annotations

import pytest
import torch

from eva import Eva
from tests.dense_reference import (
    LAYERS,
    RecordingNet,
    Reference,
    dense_solve,
    ema,
    eye,
    grad_matrix,
    kvs,
    run,
)


def eva_reference(xi: float, gamma: float) -> Reference:
    """Eq. 11–13 via the dense ``(v vᵀ + γI)⁻¹ g``, ``v = b̄ ⊗ ā``."""

    def reference(t: int, net: RecordingNet, grads: dict, st: dict) -> dict:
        out = {}
        for n in LAYERS:
            a, b = kvs(net, n)
            v = torch.kron(ema(st, (n, "b"), b, xi), ema(st, (n, "a"), a, xi))
            out[n] = dense_solve(torch.outer(v, v) + gamma * eye(v.numel()), grads[n])
        return out

    return reference


@pytest.mark.parametrize("bias", [True, False])
def test_eva_equals_dense_sherman_morrison(bias: bool) -> None:
    run(Eva, eva_reference(0.7, 0.03), bias=bias, damping=0.03, running_avg=0.7, scaling=None)


@pytest.mark.parametrize("kappa", [1e-7, 10.0])
def test_eva_kl_clip(kappa: float) -> None:
    """Eq. 16 with α = the optimizer's lr: clipping active (small κ) and inactive (large κ)."""
    run(Eva, eva_reference(0.95, 0.1), damping=0.1, running_avg=0.95, kl_clip=kappa,
        ref_scaling="kl_clip")  # fmt: skip


def test_eva_reads_current_lr() -> None:
    """KL clipping uses the lr at each step, so a scheduler changes ν without a second scheduler."""
    torch.manual_seed(0)
    net = RecordingNet()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    pre = Eva(net, opt, kl_clip=1e-9)
    x = torch.randn(4, 3, 9, 8, dtype=torch.float64)
    results = []
    for lr in (1.0, 0.5):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        net(x).square().sum().backward()
        pre.state = {k: {} for k in pre.state}  # same statistics both times
        pre.step()
        results.append(grad_matrix(net.fc2))
    torch.testing.assert_close(results[1], 2 * results[0])


def test_where_the_clip_binds_the_trajectory_does_not_depend_on_the_lr() -> None:
    """With ν < 1 at every step, ``α ν p = sqrt(κ / Σ pᵀg) p``: SGD with momentum (no weight
    decay) takes the same steps at lr 0.1 and 0.4; with a clip that never binds it does not."""

    def weights(lr: float, kappa: float) -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = RecordingNet()
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        pre = Eva(net, opt, kl_clip=kappa)
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            x = torch.randn(6, 3, 9, 8, generator=gen, dtype=torch.float64)
            opt.zero_grad()
            net(x).square().mean().backward()
            pre.step()
            assert (float(pre.scale_factor) < 1) == (kappa < 1)
            opt.step()
        return [p.detach().clone() for p in net.parameters()]

    for a, b in zip(weights(0.1, 1e-9), weights(0.4, 1e-9), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    unclipped = zip(weights(0.1, 1e9), weights(0.4, 1e9), strict=True)
    assert not all(torch.allclose(a, b) for a, b in unclipped)

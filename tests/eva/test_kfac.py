"""K-FAC (eva/kfac.py) against explicit float64 matrices.

The reference builds the damped curvature ``C + γI`` of the paper as a dense matrix
(``torch.kron``) from statistics recomputed in ``tests.dense_reference`` and solves with
``torch.linalg.solve``; running averages and refresh intervals are replayed step by step.
"""

from __future__ import annotations

import math

import pytest
import torch

from eva import KFAC
from tests.dense_reference import (
    LAYERS,
    RecordingNet,
    Reference,
    dense_solve,
    ema,
    eye,
    factors,
    kvs,
    run,
)


def kfac_reference(xi: float, gamma: float, interval: int, conv_factors: str) -> Reference:
    """Eq. 5 via ``kron(Q + γ_L I, R + γ_R I)``, refreshed every ``interval`` steps."""

    def reference(t: int, net: RecordingNet, grads: dict, st: dict) -> dict:
        out = {}
        for n in LAYERS:
            if t % interval == 0:
                r, q = factors(net, n, conv_factors)
                r, q = ema(st, (n, "r"), r, xi), ema(st, (n, "q"), q, xi)
                pi = math.sqrt(float(r.trace() / r.shape[0]) / float(q.trace() / q.shape[0]))
                gl, gr = math.sqrt(gamma) / pi, math.sqrt(gamma) * pi
                st[n, "c"] = torch.kron(q + gl * eye(q.shape[0]), r + gr * eye(r.shape[0]))
            out[n] = dense_solve(st[n, "c"], grads[n])
        return out

    return reference


@pytest.mark.parametrize("conv_factors", ["reduce", "expand"])
@pytest.mark.parametrize("interval", [1, 2])
def test_kfac_equals_dense(conv_factors: str, interval: int) -> None:
    run(KFAC, kfac_reference(0.8, 0.03, interval, conv_factors), damping=0.03, running_avg=0.8,
        update_interval=interval, conv_factors=conv_factors, scaling=None)  # fmt: skip


def test_kfac_kl_clip_and_no_bias() -> None:
    run(KFAC, kfac_reference(0.95, 0.03, 3, "reduce"), bias=False, update_interval=3,
        kl_clip=1e-6, ref_scaling="kl_clip")  # fmt: skip


def test_kfac_factors_stay_undamped() -> None:
    """The stored factors are the running averages themselves; damping only enters inverses."""
    torch.manual_seed(0)
    net = RecordingNet()
    pre = KFAC(net, torch.optim.SGD(net.parameters(), lr=0.1), update_interval=1)
    net(torch.randn(5, 3, 9, 8, dtype=torch.float64)).square().sum().backward()
    pre.step()
    r, q = factors(net, "fc1")
    torch.testing.assert_close(pre.state["fc1"]["a_factor"], r)
    torch.testing.assert_close(pre.state["fc1"]["g_factor"], q)


def test_kfac_dominates_eva_curvature() -> None:
    """Eq. 19: ``Q ⊗ R ⪰ (b̄ b̄ᵀ) ⊗ (ā āᵀ)`` for the statistics the library collects."""
    torch.manual_seed(0)
    net = RecordingNet()
    net(torch.randn(5, 3, 9, 8, dtype=torch.float64)).square().sum().backward()
    for n in LAYERS:
        (r, q), (a, b) = factors(net, n), kvs(net, n)
        assert torch.linalg.eigvalsh(r - torch.outer(a, a)).min() > -1e-12
        assert torch.linalg.eigvalsh(q - torch.outer(b, b)).min() > -1e-12

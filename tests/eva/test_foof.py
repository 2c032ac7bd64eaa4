"""FOOF (eva/foof.py) against explicit float64 matrices.

The reference builds the damped curvature ``C + γI`` of the paper as a dense matrix
(``torch.kron``) from statistics recomputed in ``tests.dense_reference`` and solves with
``torch.linalg.solve``; running averages and refresh intervals are replayed step by step.
"""

from __future__ import annotations

import pytest
import torch

from eva import FOOF
from tests.dense_reference import (
    LAYERS,
    RecordingNet,
    Reference,
    dense_solve,
    ema,
    eye,
    factors,
    run,
)


def foof_reference(xi: float, gamma: float, interval: int, rank: int | None) -> Reference:
    """Eq. 6 via ``kron(I, R + γI)``; rank 1: ``R`` replaced by ``λ₁ u₁ u₁ᵀ`` (Eq. 24–26)."""

    def reference(t: int, net: RecordingNet, grads: dict, st: dict) -> dict:
        out = {}
        for n in LAYERS:
            if t % interval == 0:
                r = ema(st, (n, "r"), factors(net, n)[0], xi)
                if rank == 1:
                    lam, u = torch.linalg.eigh(r)
                    r = lam[-1] * torch.outer(u[:, -1], u[:, -1])
                st[n, "c"] = torch.kron(eye(grads[n].shape[0]), r + gamma * eye(r.shape[0]))
            out[n] = dense_solve(st[n, "c"], grads[n])
        return out

    return reference


@pytest.mark.parametrize("rank", [None, 1])
def test_foof_equals_dense(rank: int | None) -> None:
    run(FOOF, foof_reference(0.6, 0.03, 2, rank), damping=0.03, running_avg=0.6,
        update_interval=2, rank=rank, scaling=None)  # fmt: skip


def test_foof_rank1_is_exact_for_rank1_factor() -> None:
    """With one sample per batch and no conv, R is rank one: Eq. 26 equals Eq. 6."""
    torch.manual_seed(0)
    results = []
    for rank in (None, 1):
        net = torch.nn.Sequential(torch.nn.Linear(5, 4, bias=False), torch.nn.Tanh(),
                                  torch.nn.Linear(4, 2, bias=False)).double()  # fmt: skip
        net.load_state_dict(results[0][1]) if results else None
        pre = FOOF(net, torch.optim.SGD(net.parameters(), lr=0.1), rank=rank, scaling=None)
        net(torch.ones(1, 5, dtype=torch.float64)).square().sum().backward()
        pre.step()
        results.append(([p.grad.clone() for p in net.parameters()], net.state_dict()))
    for got, want in zip(results[1][0], results[0][0], strict=True):
        torch.testing.assert_close(got, want)

"""Eva-f (eva/eva_f.py) against explicit float64 matrices.

The reference builds the damped curvature ``C + γI`` of the paper as a dense matrix
(``torch.kron``) from statistics recomputed in ``tests.dense_reference`` and solves with
``torch.linalg.solve``; running averages and refresh intervals are replayed step by step.
"""

from __future__ import annotations

import pytest
import torch

from eva import EvaF
from tests.dense_reference import LAYERS, RecordingNet, dense_solve, ema, eye, kvs, run


@pytest.mark.parametrize("divide", [False, True])
def test_eva_f_equals_dense(divide: bool) -> None:
    """Eq. 20–21: ``G (ā āᵀ + γI)⁻¹``; by default times γ (see EvaF's docstring)."""
    gamma, xi = 0.05, 0.8

    def reference(t: int, net: RecordingNet, grads: dict, st: dict) -> dict:
        out = {}
        for n in LAYERS:
            a = ema(st, (n, "a"), kvs(net, n)[0], xi)
            c = torch.kron(eye(grads[n].shape[0]), torch.outer(a, a) + gamma * eye(a.numel()))
            out[n] = dense_solve(c, grads[n]) * (1 if divide else gamma)
        return out

    run(EvaF, reference, damping=gamma, running_avg=xi, scaling=None, divide_by_damping=divide)
    run(EvaF, reference, damping=gamma, running_avg=xi, divide_by_damping=divide,
        ref_scaling="kl_norm")  # fmt: skip

"""Eva without Kronecker vectors (Table 9) (eva/eva_gradnorm.py) against explicit float64 matrices.

The reference builds the damped curvature ``C + γI`` of the paper as a dense matrix
(``torch.kron``) from statistics recomputed in ``tests.dense_reference`` and solves with
``torch.linalg.solve``; running averages and refresh intervals are replayed step by step.
"""

from __future__ import annotations

import torch

from eva import EvaGradNorm
from tests.dense_reference import LAYERS, RecordingNet, dense_solve, eye, run


def test_eva_gradnorm_equals_dense() -> None:
    """Table 9's "w/o KVs": ``(g gᵀ + γI)⁻¹ g`` per layer."""

    def reference(t: int, net: RecordingNet, grads: dict, st: dict) -> dict:
        out = {}
        for n in LAYERS:
            g = grads[n].flatten()
            out[n] = dense_solve(torch.outer(g, g) + 0.03 * eye(g.numel()), grads[n])
        return out

    run(EvaGradNorm, reference, damping=0.03, scaling=None)
    run(EvaGradNorm, reference, damping=0.03, kl_clip=1e-5, ref_scaling="kl_clip")

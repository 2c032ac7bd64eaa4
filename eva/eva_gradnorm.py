"""Eva without Kronecker vectors — the "w/o KVs" ablation of Table 9."""

from __future__ import annotations

from torch import Tensor

from eva.layers import Layer
from eva.preconditioner import Preconditioner


class EvaGradNorm(Preconditioner):
    """Eva with the gradient itself as the curvature vector: ``P = G / (γ + ‖G‖²)`` per layer.

    This is Sherman–Morrison with ``C = g gᵀ``: ``(g gᵀ + γI)⁻¹ g = g / (γ + ‖g‖²)``. It keeps
    Eva's step-size control (KL clipping by default) and needs no hooks.
    """

    def precondition(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> Tensor:
        """``G / (γ + ‖G‖²)`` for one layer (bias column included)."""
        return grad / (self.damping + grad.square().sum())

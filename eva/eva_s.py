"""Eva-s: Shampoo vectorized with per-dimension mean vectors (§4.2, Eq. 22–23)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from eva.layers import Layer
from eva.preconditioner import Options, Preconditioner


def _each_mode_mean(t: Tensor) -> list[Tensor]:
    dims = range(t.dim())
    return [t.mean(dim=[j for j in dims if j != i]) if t.dim() > 1 else t for i in dims]


def mode_means(grad: Tensor) -> list[Tensor]:
    """``v_i = mean_{-i}(G)``: the mean of the gradient tensor over all dimensions but ``i``.

    Two passes over ``G`` whatever its order: seen as a matrix (leading dimensions × trailing
    ones), its row means hold every leading mode's mean and its column means every trailing
    one's (means of equal-sized groups), which the small tensors then give.
    """
    split = max(grad.dim() // 2, 1)
    lead, trail = grad.shape[:split], grad.shape[split:]
    flat = grad.reshape(math.prod(lead), -1)
    return [*_each_mode_mean(flat.mean(1).view(lead)), *_each_mode_mean(flat.mean(0).view(trail))]


def outer(vectors: list[Tensor]) -> Tensor:
    """The rank-one tensor ``v_1 ∘ v_2 ∘ ... ∘ v_k`` (shape ``(d_1, ..., d_k)``)."""
    out = vectors[0]
    for v in vectors[1:]:
        out = out.unsqueeze(-1) * v
    return out


def contract(t: Tensor, vectors: list[Tensor]) -> Tensor:
    """``⟨t, v_1 ∘ ⋯ ∘ v_k⟩`` without forming the outer product: contract the last mode first
    (one pass over ``t``; every later product is on a tensor ``d_k`` times smaller)."""
    for v in reversed(vectors):
        t = t @ v
    return t


class EvaS(Preconditioner):
    """Eva-s (Eq. 23) with grafting to the gradient norm (§4.2).

    Acts on each layer's weight gradient as a tensor of its own shape (a convolution's as 4-D);
    biases stay first-order. With ``C = ⊗_i v_i v_iᵀ`` (Eq. 22), Sherman–Morrison gives::

        P = (G − (G ×_1 v_1 v_1ᵀ ⋯ ×_k v_k v_kᵀ) / (γ + Π_i ‖v_i‖²)) / γ

    where the product term is the scalar ``⟨G, v_1 ∘ ⋯ ∘ v_k⟩`` times ``v_1 ∘ ⋯ ∘ v_k``.
    Each layer's ``P`` is then rescaled to ``‖G‖`` (grafting), so the overall scale of ``P`` does
    not matter.

    Statistics: by default (``running_avg=None``) the ``v_i`` are summed over steps, as in the
    runs behind the paper's Fig. 8 ("β₂ = 1"). Since the denominator ``γ + Π‖v_i‖²`` is not
    scale-invariant, sums and means differ in effect; ``running_avg=ξ`` gives Eq. 14's average.

    Options are those of :class:`~eva.preconditioner.Preconditioner`, with the defaults
    ``running_avg=None`` (running sums) and ``scaling="graft"``.
    """

    defaults: ClassVar[Options] = {"running_avg": None, "scaling": "graft"}
    include_bias = False
    allow_running_sum = True

    def gradient_statistics(self, layer: Layer, grad: Tensor) -> dict[str, Tensor]:
        """The mode means ``v_i`` of Eq. 22, on refresh steps."""
        if not self.refresh_step:
            return {}
        return {f"v{i}": v for i, v in enumerate(mode_means(grad))}

    def precondition(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> Tensor:
        """Eq. 23 for one weight tensor."""
        vs = [state[f"v{i}"] for i in range(grad.dim())]
        norms = torch.stack([u @ u for u in vs]).prod()
        gamma = self.damping
        coef = contract(grad, vs) / (gamma + norms)
        # −coef/γ · v_1 ∘ ⋯ ∘ v_k + G/γ: one pass over G to contract, one to write P
        return outer([vs[0] * (-coef / gamma), *vs[1:]]).add_(grad, alpha=1 / gamma)

    # Eq. 23 with G as the (d_1, d_2·…·d_k) matrix: P = G/γ + u vᵀ, v = v_2 ∘ ⋯ ∘ v_k
    @property
    def rank_one_scale(self) -> float:
        return 1 / self.damping

    @staticmethod
    def _vectors(state: dict[str, Tensor]) -> list[Tensor]:
        return [state[f"v{i}"] for i in range(sum(key[0] == "v" for key in state))]

    def rank_one_vector(self, state: dict[str, Tensor]) -> Tensor:
        return outer(self._vectors(state)[1:]).flatten()

    def rank_one_correction(self, state: dict[str, Tensor], gv: Tensor) -> Tensor:
        """``u = −⟨G, v_1 ∘ ⋯ ∘ v_k⟩ / (γ (γ + Π‖v_i‖²)) · v_1``."""
        vs = self._vectors(state)
        norms = torch.stack([u @ u for u in vs]).prod()
        return vs[0] * ((vs[0] @ gv) / (-self.damping * (self.damping + norms)))

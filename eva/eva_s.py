"""Eva-s: Shampoo vectorized with per-dimension mean vectors (§4.2, Eq. 22–23)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from eva.layers import Layer
from eva.options import Options
from eva.rank_one import RankOnePreconditioner


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


def unit_vectors(vectors: list[Tensor]) -> tuple[list[Tensor], Tensor]:
    """The ``v_i`` scaled to unit length (a zero vector stays zero), and their norms (stacked).

    Eq. 23's correction ``⟨G, V⟩ / (γ + ‖V‖²) · V`` with ``V = v_1 ∘ ⋯ ∘ v_k`` (``‖V‖ = Π‖v_i‖``)
    is ``r ⟨G, U⟩ U`` with ``U`` the outer product of the unit vectors and ``r`` of
    :func:`norm_ratio`. Written so, nothing grows with the vectors: the product of k squared
    norms (and ``⟨G, V⟩``) overflows float32 once the norms are large — large gradients, or
    running sums over many steps — and the printed form then gives NaN.
    """
    norms = torch.stack(torch._foreach_norm(vectors))
    return torch._foreach_div(vectors, list(_divisor(norms).unbind())), norms


def _divisor(norms: Tensor) -> Tensor:
    """Norms to divide by: a zero norm (zero vector) becomes the smallest normal number."""
    return norms.clamp(min=torch.finfo(norms.dtype).tiny)


def norm_ratio(norms: Tensor, damping: float) -> Tensor:
    """``r = Π‖v_i‖² / (γ + Π‖v_i‖²)`` as a sigmoid of log norms (tends to 1, never overflows)."""
    return torch.sigmoid(2 * norms.log().sum() - math.log(damping))


class EvaS(RankOnePreconditioner):
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

    defaults: ClassVar[Options] = Options(running_avg=None, scaling="graft")
    include_bias = False
    allow_running_sum = True
    uses_gradient_statistics = True

    def gradient_statistics(self, layer: Layer, grad: Tensor) -> dict[str, Tensor]:
        """The mode means ``v_i`` of Eq. 22, on refresh steps."""
        if not self.refresh_step:
            return {}
        return {f"v{i}": v for i, v in enumerate(mode_means(grad))}

    def precondition(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> Tensor:
        """Eq. 23 for one weight tensor (in the overflow-free form of :func:`unit_vectors`)."""
        us, norms = unit_vectors([state[f"v{i}"] for i in range(grad.dim())])
        gamma = self.damping
        coef = norm_ratio(norms, gamma) * contract(grad, us)
        # −coef/γ · u_1 ∘ ⋯ ∘ u_k + G/γ: one pass over G to contract, one to write P
        return outer([us[0] * (-coef / gamma), *us[1:]]).add_(grad, alpha=1 / gamma)

    # Eq. 23 with G as the (d_1, d_2·…·d_k) matrix: P = G/γ + u vᵀ, v = u_2 ∘ ⋯ ∘ u_k (unit
    # vectors, see unit_vectors)
    @property
    def rank_one_scale(self) -> float:
        return 1 / self.damping

    @staticmethod
    def _vectors(state: dict[str, Tensor]) -> list[Tensor]:
        return [state[f"v{i}"] for i in range(sum(key[0] == "v" for key in state))]

    def rank_one_vector(self, state: dict[str, Tensor]) -> Tensor:
        return outer(unit_vectors(self._vectors(state)[1:])[0]).flatten()

    def rank_one_correction(self, state: dict[str, Tensor], gv: Tensor) -> Tensor:
        """``u = −r ⟨G, u_1 ∘ ⋯ ∘ u_k⟩ / γ · u_1`` (= Eq. 23's ``−⟨G, V⟩ / (γ (γ + ‖V‖²)) · v_1``
        scaled to the unit ``v`` above)."""
        vs = self._vectors(state)
        norms = torch.stack(torch._foreach_norm(vs))
        u1 = vs[0] / _divisor(norms[0])
        return u1 * ((u1 @ gv) * norm_ratio(norms, self.damping) * (-1 / self.damping))

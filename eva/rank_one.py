"""The step of algorithms whose preconditioned gradient is a rank-one correction of ``G``.

Eva (Eq. 13), Eva-f (Eq. 21) and Eva-s (Eq. 23, with ``G`` seen as a ``(d_1, d_2·…·d_k)``
matrix) precondition every layer as::

    P = s·G + u vᵀ

with a scalar ``s`` shared by all layers (``1/γ`` or 1), ``v`` from the layer's state (``ā``, or
``v_2 ∘ ⋯ ∘ v_k``) and ``u`` from ``G v`` (and the state). The step then needs ``G`` only through
``G v`` and ``‖G‖²``:

- the KL size of Eq. 16 / §4.1 is ``Σ_l p_lᵀ g_l = s Σ_l ‖G_l‖² + Σ_l u_lᵀ (G_l v_l)``;
- grafting (§4.2) needs ``‖P_l‖² = s²‖G_l‖² + 2s u_lᵀ(G_l v_l) + ‖u_l‖²‖v_l‖²``;
- the scaled update ``f P`` is written into ``.grad`` in place: ``G ← (f s) G``, then
  ``G += (f u) vᵀ``.

So no ``P`` is ever formed or allocated: one read of every gradient for ``G v``, one for the
norms, and two in-place passes, each a single ``torch._foreach`` call over all layers (the
generic path allocates, copies and rescales every gradient several times). With
``include_bias``, ``G`` has the bias column (§2.1): the bias gradient is read and updated beside
the weight gradient, never concatenated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from eva.layers import Layer
from eva.scaling import graft_factor, kl_clip_factor, kl_norm_factor

if TYPE_CHECKING:
    from eva.preconditioner import Preconditioner


def weight_matrix(layer: Layer) -> Tensor | None:
    """``weight.grad`` as a ``(d_out, d_in)`` view, or None when its layout allows no view
    (e.g. a channels-last convolution)."""
    grad = layer.weight.grad
    if grad is None or not grad.is_contiguous():
        return None
    return grad.view(grad.shape[0], -1)


def grad_times(weight: Tensor, bias: Tensor | None, v: Tensor) -> Tensor:
    """``G v`` for ``G = [weight | bias]`` (or ``weight``) without forming ``G``."""
    if bias is None:
        return weight @ v
    return torch.addmv(bias * v[-1], weight, v[:-1])


def rank_one_step(pre: Preconditioner, layers: list[Layer], weights: list[Tensor]) -> None:
    """Precondition, scale and write back every layer of ``layers`` (all ready, with weight
    gradients viewed as matrices in ``weights``) in place."""
    scale = pre.rank_one_scale
    states = [pre.state[layer.name] for layer in layers]
    biases = [
        layer.module.bias.grad if pre.include_bias and layer.has_bias else None  # type: ignore[union-attr]
        for layer in layers
    ]
    vs = [pre.rank_one_vector(state) for state in states]
    gvs = [grad_times(w, b, v) for w, b, v in zip(weights, biases, vs, strict=True)]
    us = [pre.rank_one_correction(state, gv) for state, gv in zip(states, gvs, strict=True)]
    with_bias = [i for i, b in enumerate(biases) if b is not None]
    grads: list[Tensor] = [*weights, *(biases[i] for i in with_bias)]  # type: ignore[misc]

    factors: list[Tensor] | Tensor | float = 1.0
    if pre.scaling is not None and not (pre.scaling == "kl_clip" and pre.kl_clip is None):
        none = weights[0].new_zeros(0)  # norm 0 for a layer without a bias
        g_sq = (
            torch.stack(torch._foreach_norm(weights)).square()
            + torch.stack(torch._foreach_norm([none if b is None else b for b in biases])).square()
        )  # ‖G_l‖²
        ugv = torch.stack([u @ gv for u, gv in zip(us, gvs, strict=True)])  # u_lᵀ G_l v_l
        if pre.scaling == "graft":
            uv_sq = torch.stack([(u @ u) * (v @ v) for u, v in zip(us, vs, strict=True)])
            p_sq = (scale**2 * g_sq + 2 * scale * ugv + uv_sq).clamp(min=0)  # ≥ 0 but rounded
            factors = list(graft_factor(p_sq.sqrt(), g_sq.sqrt()).unbind())
        else:
            kl = scale * g_sq.sum() + ugv.sum()  # Σ_l p_lᵀ g_l
            if pre.scaling == "kl_clip":
                factors = kl_clip_factor(kl, pre.lr, pre.kl_clip)  # type: ignore[arg-type]
            else:
                factors = kl_norm_factor(kl)

    if isinstance(factors, list):  # one factor per layer (its bias too)
        torch._foreach_mul_(
            grads, [f * scale for f in [*factors, *(factors[i] for i in with_bias)]]
        )
        us = torch._foreach_mul(us, factors)
    else:
        torch._foreach_mul_(grads, factors * scale)
        us = torch._foreach_mul(us, factors) if isinstance(factors, Tensor) else us
    torch._foreach_addcmul_(
        weights,
        [u.unsqueeze(1) for u in us],
        [v[: w.shape[1]].unsqueeze(0) for v, w in zip(vs, weights, strict=True)],
    )
    if with_bias:
        torch._foreach_addcmul_(
            [biases[i] for i in with_bias],  # type: ignore[misc]
            [us[i] for i in with_bias],
            [vs[i][-1:] for i in with_bias],
        )

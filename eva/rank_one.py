"""The step of algorithms whose preconditioned gradient is a rank-one correction of ``G``.

Eva (Eq. 13) and Eva-f (Eq. 21) precondition every layer as::

    P = s·G + u vᵀ

with a scalar ``s`` shared by all layers (``1/γ`` or 1), ``v`` from the layer's state (``ā``) and
``u`` from ``G v`` (and the state). The step then needs ``G`` only through ``G v`` and ``‖G‖²``:

- the KL size of Eq. 16 / §4.1 is ``Σ_l p_lᵀ g_l = s Σ_l ‖G_l‖² + Σ_l u_lᵀ (G_l v_l)``;
- the scaled update ``ν P`` is written into ``.grad`` in place: ``G ← (ν s) G``, then
  ``G += (ν u) vᵀ``.

So no ``P`` is ever formed: one read of every gradient for ``G v``, one for the norms, and two
in-place passes, each a single ``torch._foreach`` call over all layers (the generic path stacks,
copies and rescales every gradient several times). ``G`` includes the bias column (§2.1): the
bias gradient is read and updated beside the weight gradient, never concatenated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from eva.layers import Layer
from eva.scaling import kl_clip_factor, kl_norm_factor

if TYPE_CHECKING:
    from eva.preconditioner import Preconditioner

SCALINGS = ("kl_clip", "kl_norm", None)
"""The step-size controls that depend on ``P`` only through ``Σ pᵀg``."""


def weight_matrix(layer: Layer) -> Tensor | None:
    """``weight.grad`` as a ``(d_out, d_in)`` view, or None when its layout allows no view
    (e.g. a channels-last convolution)."""
    grad = layer.weight.grad
    if grad is None or not grad.is_contiguous():
        return None
    return grad.view(grad.shape[0], -1)


def grad_times(layer: Layer, weight: Tensor, v: Tensor) -> Tensor:
    """``G v`` for the layer's ``G = [weight | bias]`` without forming ``G``."""
    if not layer.has_bias:
        return weight @ v
    bias = layer.module.bias.grad  # type: ignore[union-attr]
    return torch.addmv(bias * v[-1], weight, v[:-1])


def rank_one_step(pre: Preconditioner, layers: list[Layer], weights: list[Tensor]) -> None:
    """Precondition, scale and write back every layer of ``layers`` (all ready, with weight
    gradients viewed as matrices in ``weights``) in place."""
    scale = pre.rank_one_scale
    vs = [pre.rank_one_vector(pre.state[layer.name]) for layer in layers]
    gvs = [grad_times(layer, w, v) for layer, w, v in zip(layers, weights, vs, strict=True)]
    us = [
        pre.rank_one_correction(pre.state[layer.name], gv)
        for layer, gv in zip(layers, gvs, strict=True)
    ]
    biases = [layer.module.bias.grad for layer in layers if layer.has_bias]
    with_bias = [i for i, layer in enumerate(layers) if layer.has_bias]
    grads: list[Tensor] = [*weights, *biases]  # type: ignore[list-item]

    factor: Tensor | float = 1.0
    if pre.scaling is not None and not (pre.scaling == "kl_clip" and pre.kl_clip is None):
        norms = torch.stack(torch._foreach_norm(grads))
        kl = scale * norms.square().sum() + torch.cat(us) @ torch.cat(gvs)  # Σ_l p_lᵀ g_l
        if pre.scaling == "kl_clip":
            factor = kl_clip_factor(kl, pre.lr, pre.kl_clip)  # type: ignore[arg-type]
        else:
            factor = kl_norm_factor(kl)

    torch._foreach_mul_(grads, factor * scale)
    us = torch._foreach_mul(us, factor) if isinstance(factor, Tensor) else us
    torch._foreach_addcmul_(
        weights,
        [u.unsqueeze(1) for u in us],
        [v[: w.shape[1]].unsqueeze(0) for v, w in zip(vs, weights, strict=True)],
    )
    if biases:
        torch._foreach_addcmul_(biases, [us[i] for i in with_bias], [vs[i][-1:] for i in with_bias])

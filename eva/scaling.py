"""Step-size control applied to the preconditioned gradients ``p_l`` of all layers.

- ``"kl_clip"`` — Eq. 16: every ``p_l`` times ``ν = min(1, sqrt(κ / (α² Σ_l p_lᵀ g_l)))``.
- ``"kl_norm"`` — §4.1: every ``p_l`` divided by ``sqrt(Σ_l p_lᵀ g_l)``.
- ``"graft"``   — §4.2: each ``p_l`` times ``‖g_l‖ / ‖p_l‖`` (grafting).
- ``None``      — the preconditioned gradients as they are.

All factors stay tensors: no host synchronisation.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Scaling = Literal["kl_clip", "kl_norm", "graft"] | None
SCALINGS = ("kl_clip", "kl_norm", "graft", None)


def _kl_size(precond: list[Tensor], grads: list[Tensor]) -> Tensor:
    """``Σ_l p_lᵀ g_l`` over all layers (as a 0-dim tensor)."""
    pairs = zip(precond, grads, strict=True)
    return torch.stack([torch.vdot(p.flatten(), g.flatten()) for p, g in pairs]).sum()


def kl_clip_factor(kl_size: Tensor, lr: float | Tensor, kappa: float) -> Tensor:
    """ν of Eq. 16 from ``Σ_l p_lᵀ g_l``: ``min(1, sqrt(κ / (α² |Σ pᵀg|)))``; 1 for a zero size.

    Where the clip binds (ν < 1) the step ``α ν p = sqrt(κ / Σ pᵀg) · p`` does not depend on α:
    the learning rate then only scales the base optimizer's weight decay. For ``p = G/γ`` (Eva
    where b̄ = 0, see :class:`eva.Eva`) that step is ``sqrt(κ/γ) · G/‖G‖`` (‖G‖ over all layers), a
    normalized gradient of fixed length."""
    kl = kl_size.abs() * lr**2
    return torch.where(kl > 0, torch.sqrt(kappa / kl), torch.ones_like(kl)).clamp(max=1.0)


def kl_norm_factor(kl_size: Tensor) -> Tensor:
    """The factor of KL normalization (§4.1): ``1 / sqrt(|Σ_l p_lᵀ g_l|)``; 1 for a zero size."""
    kl = kl_size.abs()
    return torch.where(kl > 0, kl.rsqrt(), torch.ones_like(kl))


def kl_clip(precond: list[Tensor], grads: list[Tensor], lr: float | Tensor, kappa: float) -> Tensor:
    """Eq. 16, in place; returns ν. A zero KL size leaves the step unclipped (ν = 1)."""
    factor = kl_clip_factor(_kl_size(precond, grads), lr, kappa)
    torch._foreach_mul_(precond, factor)
    return factor


def kl_norm(precond: list[Tensor], grads: list[Tensor]) -> Tensor:
    """KL normalization (§4.1), in place: ``p_l / sqrt(Σ p_lᵀ g_l)``; a zero KL size leaves p.
    Returns the factor."""
    factor = kl_norm_factor(_kl_size(precond, grads))
    torch._foreach_mul_(precond, factor)
    return factor


def graft_factor(p_norm: Tensor, g_norm: Tensor) -> Tensor:
    """The factor of grafting (§4.2): ``‖g‖ / ‖p‖``; 1 where ``p`` is zero."""
    return torch.where(p_norm > 0, g_norm / p_norm, torch.ones_like(p_norm))


def graft(precond: list[Tensor], grads: list[Tensor]) -> Tensor:
    """Grafting to the gradient norm (§4.2), in place: each ``p_l`` times ``‖g_l‖ / ‖p_l‖``.
    Returns the factors, one per layer."""
    p_norms = torch._foreach_norm(precond)
    g_norms = torch._foreach_norm(grads)
    factors = [graft_factor(pn, gn) for pn, gn in zip(p_norms, g_norms, strict=True)]
    for p, factor in zip(precond, factors, strict=True):
        p.mul_(factor)
    return torch.stack([f.to(factors[0].dtype) for f in factors])  # layers may differ in dtype


def apply_scaling(
    scaling: Scaling,
    precond: list[Tensor],
    grads: list[Tensor],
    lr: float | Tensor,
    kappa: float | None,
) -> Tensor | None:
    """Apply the named scaling to ``precond`` in place (``grads`` are the raw gradients);
    returns its factor (ν of Eq. 16, the KL normalization's, or one per layer for grafting), or
    None where nothing was scaled."""
    if not precond or scaling is None:
        return None
    if scaling == "kl_clip":
        return None if kappa is None else kl_clip(precond, grads, lr, kappa)
    if scaling == "kl_norm":
        return kl_norm(precond, grads)
    if scaling == "graft":
        return graft(precond, grads)
    raise ValueError(f"scaling: unknown {scaling!r}; expected one of {SCALINGS}")  # guarded

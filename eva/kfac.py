"""K-FAC: Kronecker-factored curvature with a damping split (§2.2, Eq. 4–5)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from typing_extensions import Unpack

from eva.layers import Layer
from eva.preconditioner import Options, Preconditioner


def damped_inverse(factor: Tensor, damping: Tensor | float) -> Tensor:
    """``(M + damping·I)⁻¹`` of a symmetric positive semi-definite ``M`` (a new tensor).

    Computed through a Cholesky factorization (``cholesky_ex``: no host synchronisation for an
    error check; the damped factor is positive definite); ``M`` itself is left untouched.
    """
    eye = torch.eye(factor.shape[0], dtype=factor.dtype, device=factor.device)
    return torch.cholesky_inverse(torch.linalg.cholesky_ex(factor + damping * eye).L)


def damping_split(q: Tensor, r: Tensor) -> Tensor:
    """π of the factored Tikhonov damping: ``sqrt((tr R / dim R) / (tr Q / dim Q))``.

    A zero trace gives π = 1.
    """
    ratio = (r.diagonal().mean()) / q.diagonal().mean()
    return torch.where(torch.isfinite(ratio) & (ratio > 0), ratio.sqrt(), torch.ones_like(ratio))


class KFAC(Preconditioner):
    """K-FAC (Eq. 5): ``P = (Q + γ_L I)⁻¹ G (R + γ_R I)⁻¹`` with ``γ_L = √γ/π``, ``γ_R = π√γ``.

    ``Q`` and ``R`` (Eq. 4, as batch means, see :mod:`eva.statistics`) are running-averaged
    (Eq. 14 form) and inverted every ``update_interval`` steps; the inverses are used in between.
    The damping only enters the inverses: the stored factors stay undamped.

    Args:
        use_damping_split: Use π (default ``True``); ``False`` damps both sides with ``√γ``.
        **options: As :class:`~eva.preconditioner.Preconditioner`, with ``update_interval``
            (factor and inverse refresh) defaulting to 10, the paper's CIFAR setting.
            ``conv_factors``: ``"reduce"`` (default; per-sample spatially averaged patches and
            output gradients, as the Eva authors ran) or ``"expand"`` (per position; Grosse &
            Martens, 2016).
    """

    defaults: ClassVar[Options] = {"update_interval": 10}
    statistics_needed = ("a_factor", "g_factor")

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        use_damping_split: bool = True,
        **options: Unpack[Options],
    ) -> None:
        super().__init__(model, optimizer, **options)
        self.use_damping_split = use_damping_split

    def update_state(
        self, layer: Layer, state: dict[str, Tensor], current: dict[str, Tensor]
    ) -> None:
        """Running-average the factors, then refresh the damped inverses."""
        super().update_state(layer, state, current)
        q, r = state["g_factor"], state["a_factor"]
        root = self.damping**0.5
        pi = (
            damping_split(q, r)
            if self.use_damping_split
            else torch.ones((), dtype=q.dtype, device=q.device)
        )
        state["q_inv"] = damped_inverse(q, root / pi)
        state["r_inv"] = damped_inverse(r, root * pi)

    def precondition(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> Tensor:
        """Eq. 5 for one layer."""
        return state["q_inv"] @ grad @ state["r_inv"]

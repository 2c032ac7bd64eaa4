"""FOOF: right-sided K-FAC on the input factor (§2.2, Eq. 6), and its rank-1 form (Eq. 24–26)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eva.kfac import damped_inverses
from eva.layers import Layer
from eva.options import Options
from eva.preconditioner import Preconditioner


class FOOF(Preconditioner):
    """FOOF (Eq. 6): ``P = G (R + γI)⁻¹``; with ``rank=1``, Eq. 26.

    ``rank=1`` keeps only the top eigenpair ``(λ₁, u₁)`` of ``R`` (Eq. 24–26)::

        P = (G − λ₁ / (γ + λ₁) · G u₁ u₁ᵀ) / γ

    Defaults follow the authors' runs behind the paper: the factor is refreshed every 50 steps
    from that step's batch alone (``running_avg=1``) and the step is KL-clipped with κ = 0.001.

    Args:
        rank: ``None`` (default) for the full inverse, ``1`` for Eq. 26.
        **options: As :class:`~eva.preconditioner.Preconditioner`, with the defaults
            ``update_interval=50`` and ``running_avg=1.0`` (no history); ``conv_factors`` as
            for :class:`~eva.kfac.KFAC`.
    """

    defaults: ClassVar[Options] = Options(running_avg=1.0, update_interval=50)
    statistics_needed = ("a_factor",)

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        rank: int | None = None,
        **options: Any,
    ) -> None:
        if rank is not None and rank != 1:
            raise ValueError(f"rank must be None (full inverse) or 1 (Eq. 26), got {rank!r}")
        super().__init__(model, optimizer, **options)
        self.rank = rank

    def update_states(
        self, updates: list[tuple[Layer, dict[str, Tensor], dict[str, Tensor]]]
    ) -> None:
        """Running-average ``R``, then refresh its damped inverse (equal small sizes in one
        batched call) or its top eigenpair."""
        super().update_states(updates)
        states = [state for _, state, _ in updates]
        if self.rank == 1:
            for state in states:
                eigvals, eigvecs = torch.linalg.eigh(state["a_factor"])
                state["eigval"], state["eigvec"] = eigvals[-1], eigvecs[:, -1].clone()
            return
        factors = [state["a_factor"] for state in states]
        for state in states:  # free the old inverses first: peak memory holds one set
            state.pop("r_inv", None)
        inverses = damped_inverses(factors, [self.damping] * len(factors))
        for state, inverse in zip(states, inverses, strict=True):
            state["r_inv"] = inverse

    def precondition(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> Tensor:
        """Eq. 6 (or Eq. 26 with ``rank=1``) for one layer."""
        if self.rank != 1:
            return grad @ state["r_inv"]
        lam, u = state["eigval"], state["eigvec"]
        gamma = self.damping
        return (grad - (lam / (gamma + lam)) * torch.outer(grad @ u, u)) / gamma

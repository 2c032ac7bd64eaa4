"""Eva: K-FAC vectorized with Kronecker vectors (§3.1, Eq. 9–16)."""

from __future__ import annotations

import torch
from torch import Tensor

from eva.layers import Layer
from eva.rank_one import RankOnePreconditioner
from eva.rank_one_ops import row_dot


class Eva(RankOnePreconditioner):
    """Eva (Eq. 13) with KL clipping (Eq. 16).

    The curvature of layer ``l`` is the rank-one ``C = (b̄ ⊗ ā)(b̄ ⊗ ā)ᵀ`` built from the running
    averages of the Kronecker vectors (Eq. 10, 14–15); Sherman–Morrison gives Eq. 13::

        P = (G − (b̄ᵀ G ā) / (γ + ‖ā‖²‖b̄‖²) · b̄ āᵀ) / γ

    then every layer's ``P`` is scaled by ν of Eq. 16 with α = the optimizer's current lr.
    Paper and authors' code agree here. A layer whose output feeds only a BatchNorm in training
    mode has b̄ = 0 exactly, so ``P = G/γ`` there; its b̄ is then recorded as zero without
    reading the gradient (:mod:`eva.batchnorm`), and while b̄'s running average stays exactly
    zero ā is not read either (it cannot change ``P``; ``a_mean`` holds zeros, and its average
    starts afresh at the first step whose b̄ is not zero). All arguments are the shared ones of
    :class:`~eva.preconditioner.Preconditioner` (defaults: damping 0.03, running_avg 0.95,
    kl_clip 0.001, scaling ``"kl_clip"``, update_interval 1).
    """

    statistics_needed = ("a_mean", "g_mean")
    rank_one_batched = True
    a_mean_unused_if_g_mean_zero = True

    def precondition(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> Tensor:
        """Eq. 13 for one layer."""
        a, b = state["a_mean"], state["g_mean"]
        gamma = self.damping
        coef = (b @ grad @ a) / (gamma + (a @ a) * (b @ b))
        return (grad - coef * torch.outer(b, a)) / gamma

    @property
    def rank_one_scale(self) -> float:
        """Eq. 13 as ``P = G/γ + u āᵀ``."""
        return 1 / self.damping

    def rank_one_vector(self, state: dict[str, Tensor]) -> Tensor:
        return state["a_mean"]

    def rank_one_correction(self, state: dict[str, Tensor], gv: Tensor) -> Tensor:
        """``u = −(b̄ᵀ G ā) / (γ (γ + ‖ā‖²‖b̄‖²)) · b̄`` of Eq. 13."""
        a, b = state["a_mean"], state["g_mean"]
        gamma = self.damping
        return b * (row_dot(b, gv) / (-gamma * (gamma + row_dot(a, a) * row_dot(b, b))))

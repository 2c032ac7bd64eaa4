"""Eva: K-FAC vectorized with Kronecker vectors (§3.1, Eq. 9–16)."""

from __future__ import annotations

import torch
from torch import Tensor

from eva.layers import Layer
from eva.preconditioner import Preconditioner


class Eva(Preconditioner):
    """Eva (Eq. 13) with KL clipping (Eq. 16).

    The curvature of layer ``l`` is the rank-one ``C = (b̄ ⊗ ā)(b̄ ⊗ ā)ᵀ`` built from the running
    averages of the Kronecker vectors (Eq. 10, 14–15); Sherman–Morrison gives Eq. 13::

        P = (G − (b̄ᵀ G ā) / (γ + ‖ā‖²‖b̄‖²) · b̄ āᵀ) / γ

    then every layer's ``P`` is scaled by ν of Eq. 16 with α = the optimizer's current lr.
    Paper and authors' code agree here. All arguments are the shared ones of
    :class:`~eva.preconditioner.Preconditioner` (defaults: damping 0.03, running_avg 0.95,
    kl_clip 0.001, scaling ``"kl_clip"``, update_interval 1).
    """

    statistics_needed = ("a_mean", "g_mean")

    def precondition(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> Tensor:
        """Eq. 13 for one layer."""
        a, b = state["a_mean"], state["g_mean"]
        gamma = self.damping
        coef = (b @ grad @ a) / (gamma + (a @ a) * (b @ b))
        return (grad - coef * torch.outer(b, a)) / gamma

    def precondition_batch(self, grads: Tensor, states: dict[str, Tensor]) -> Tensor:
        """Eq. 13 for ``k`` layers of one shape at once (``grads``: ``(k, out, in)``)."""
        a, b, gamma = states["a_mean"], states["g_mean"], self.damping
        ga = torch.bmm(grads, a.unsqueeze(2)).squeeze(2)  # G ā
        coef = (b * ga).sum(1) / (gamma + (a * a).sum(1) * (b * b).sum(1))
        p = torch.addcmul(grads, (b * coef.unsqueeze(1)).unsqueeze(2), a.unsqueeze(1), value=-1)
        return p.div_(gamma)

"""Eva-f: FOOF vectorized with the mean input (§4.1, Eq. 20–21)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eva.layers import Layer
from eva.options import Options
from eva.rank_one import RankOnePreconditioner
from eva.rank_one_ops import row_dot


class EvaF(RankOnePreconditioner):
    """Eva-f (Eq. 21) with KL normalization (§4.1).

    Eq. 21 with ``C = I ⊗ ā āᵀ``::

        P = (G − G ā āᵀ / (γ + āᵀā)) / γ

    Default (``divide_by_damping=False``): the 1/γ is left out, as in the runs behind the paper's
    Fig. 8. KL normalization ``p / sqrt(Σ pᵀg)`` is not scale-invariant (scaling ``p`` by ``c``
    scales the result by ``√c``), so keeping 1/γ would make every step ``1/√γ`` times larger
    (≈ 5.8× at γ = 0.03). ``divide_by_damping=True`` gives Eq. 21 as printed.

    Args:
        divide_by_damping: Apply Eq. 21's ``1/γ``. Default ``False`` (see above).
        **options: As :class:`~eva.preconditioner.Preconditioner`; here ``scaling`` defaults
            to ``"kl_norm"``.
    """

    defaults: ClassVar[Options] = Options(scaling="kl_norm")
    statistics_needed = ("a_mean",)
    rank_one_batched = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        divide_by_damping: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(model, optimizer, **options)
        self.divide_by_damping = divide_by_damping

    def precondition(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> Tensor:
        """Eq. 21 for one layer (without 1/γ unless ``divide_by_damping``)."""
        a = state["a_mean"]
        p = grad - torch.outer(grad @ a, a) / (self.damping + a @ a)
        return p / self.damping if self.divide_by_damping else p

    @property
    def rank_one_scale(self) -> float:
        """Eq. 21 as ``P = s·G + u āᵀ`` (``s = 1/γ`` or 1)."""
        return 1 / self.damping if self.divide_by_damping else 1.0

    def rank_one_vector(self, state: dict[str, Tensor]) -> Tensor:
        return state["a_mean"]

    def rank_one_correction(self, state: dict[str, Tensor], gv: Tensor) -> Tensor:
        """``u = −s · G ā / (γ + āᵀā)`` of Eq. 21."""
        a = state["a_mean"]
        return gv * (-self.rank_one_scale / (self.damping + row_dot(a, a)))

"""Eva-f: FOOF vectorized with the mean input (§4.1, Eq. 20–21)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from eva.comm import Reducer
from eva.layers import Layer
from eva.preconditioner import DEFAULT, Preconditioner
from eva.scaling import Scaling


class EvaF(Preconditioner):
    """Eva-f (Eq. 21) with KL normalization (§4.1).

    Eq. 21 with ``C = I ⊗ ā āᵀ``::

        P = (G − G ā āᵀ / (γ + āᵀā)) / γ

    Default (``divide_by_damping=False``): the 1/γ is left out, as in the runs behind the paper's
    Fig. 8. KL normalization ``p / sqrt(Σ pᵀg)`` is not scale-invariant (scaling ``p`` by ``c``
    scales the result by ``√c``), so keeping 1/γ would make every step ``1/√γ`` times larger
    (≈ 5.8× at γ = 0.03). ``divide_by_damping=True`` gives Eq. 21 as printed.

    Args:
        divide_by_damping: Apply Eq. 21's ``1/γ``. Default ``False`` (see above).
        Others: as :class:`~eva.preconditioner.Preconditioner`; here ``scaling`` defaults to
            ``"kl_norm"``.
    """

    statistics_needed = ("a_mean",)
    default_scaling = "kl_norm"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        damping: float = 0.03,
        running_avg: float | None = 0.95,
        kl_clip: float | None = 0.001,
        scaling: Scaling | str = DEFAULT,
        update_interval: int = 1,
        skip_layers: Iterable[str] = (),
        stat_batch: int | None = None,
        divide_by_damping: bool = False,
        enabled: bool = True,
        reducer: Reducer | None = None,
    ) -> None:
        super().__init__(
            model,
            optimizer,
            damping=damping,
            running_avg=running_avg,
            kl_clip=kl_clip,
            scaling=scaling,
            update_interval=update_interval,
            skip_layers=skip_layers,
            stat_batch=stat_batch,
            enabled=enabled,
            reducer=reducer,
        )
        self.divide_by_damping = divide_by_damping

    def precondition(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> Tensor:
        """Eq. 21 for one layer (without 1/γ unless ``divide_by_damping``)."""
        a = state["a_mean"]
        p = grad - torch.outer(grad @ a, a) / (self.damping + a @ a)
        return p / self.damping if self.divide_by_damping else p

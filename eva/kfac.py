"""K-FAC: Kronecker-factored curvature with a damping split (§2.2, Eq. 4–5)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eva.layers import Layer
from eva.options import Options
from eva.preconditioner import Preconditioner


def damped_inverse(factor: Tensor, damping: Tensor | float) -> Tensor:
    """``(M + damping·I)⁻¹`` of a symmetric positive semi-definite ``M`` (a new tensor).

    Computed through a Cholesky factorization (``cholesky_ex``: no host synchronisation for an
    error check; the damped factor is positive definite); ``M`` itself is left untouched.
    """
    eye = torch.eye(factor.shape[0], dtype=factor.dtype, device=factor.device)
    return torch.cholesky_inverse(torch.linalg.cholesky_ex(factor + damping * eye).L)


STACKED_INVERSE_MAX = {"cuda": 1024, "cpu": 256}
"""Per device type, the largest factor size that :func:`damped_inverses` inverts in stacks of
equal sizes (one batched Cholesky), where that measured faster per matrix
(``python -m scripts.bench inverse``, ``results/bench/inverse-*.md``): on an H200 2–3× at sizes
64–256 and 1.2× at 1024, slower from 2304 on; on this project's 2-core CPU 2.8× at 64, 1.4× at
144, 1.1× at 256, slower from 288 on. Other devices: the CPU's."""


def damped_inverses(factors: list[Tensor], dampings: list[Tensor | float]) -> list[Tensor]:
    """:func:`damped_inverse` of every factor with its damping (a float or a 0-dim tensor).

    Factors of equal size up to :data:`STACKED_INVERSE_MAX` go through one batched Cholesky
    factorization and inverse (the results are views into it); larger ones one by one.
    """
    out: list[Tensor | None] = [None] * len(factors)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, f in enumerate(factors):
        limit = STACKED_INVERSE_MAX.get(f.device.type, STACKED_INVERSE_MAX["cpu"])
        if f.shape[0] <= limit:
            groups[(f.shape[0], f.dtype, f.device)].append(i)
        else:
            out[i] = damped_inverse(f, dampings[i])
    for members in groups.values():
        if len(members) == 1:
            out[members[0]] = damped_inverse(factors[members[0]], dampings[members[0]])
            continue
        stack = torch.stack([factors[i] for i in members])
        diagonal = stack.diagonal(dim1=-2, dim2=-1)
        damp = [dampings[i] for i in members]
        if all(isinstance(d, Tensor) for d in damp):
            diagonal.add_(torch.stack(damp).to(stack.dtype).unsqueeze(-1))  # type: ignore[arg-type]
        elif len(set(damp)) == 1:  # one float for all: no tensor to build on the device
            diagonal.add_(damp[0])
        else:
            for row, d in zip(diagonal, damp, strict=True):
                row.add_(d)
        inverses = torch.cholesky_inverse(torch.linalg.cholesky_ex(stack).L).unbind()
        for i, inverse in zip(members, inverses, strict=True):
            out[i] = inverse
    return out  # type: ignore[return-value]


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

    defaults: ClassVar[Options] = Options(update_interval=10)
    statistics_needed = ("a_factor", "g_factor")

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        use_damping_split: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(model, optimizer, **options)
        self.use_damping_split = use_damping_split

    def update_states(
        self, updates: list[tuple[Layer, dict[str, Tensor], dict[str, Tensor]]]
    ) -> None:
        """Running-average the factors (Eq. 14 form), then refresh the damped inverses of every
        updated layer (:func:`damped_inverses`: equal small sizes in one batched call)."""
        super().update_states(updates)
        states = [state for _, state, _ in updates]
        root = self.damping**0.5
        qs, rs = [s["g_factor"] for s in states], [s["a_factor"] for s in states]
        pis: list[Tensor | float] = (
            [damping_split(q, r) for q, r in zip(qs, rs, strict=True)]
            if self.use_damping_split
            else [1.0] * len(states)
        )
        for state in states:  # free the old inverses first: peak memory holds one set
            state.pop("q_inv", None)
            state.pop("r_inv", None)
        inverses = damped_inverses(
            [*qs, *rs], [*(root / pi for pi in pis), *(root * pi for pi in pis)]
        )
        for i, state in enumerate(states):
            state["q_inv"], state["r_inv"] = inverses[i], inverses[len(states) + i]

    def precondition(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> Tensor:
        """Eq. 5 for one layer."""
        return state["q_inv"] @ grad @ state["r_inv"]

"""M-FAC: the empirical Fisher of a sliding window of gradients, inverted matrix-free."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eva.layers import Layer
from eva.options import Options, check_int
from eva.preconditioner import Preconditioner


class MFAC(Preconditioner):
    """M-FAC's dynamic algorithm (Frantar, Kurtic & Alistarh, NeurIPS 2021), per layer.

    Each layer keeps its last ``m = num_grads`` gradients ``g_i`` (``G`` with the bias column,
    flattened to length ``d``) as the rows of an ``m × d`` ring buffer, and preconditions with the
    damped empirical Fisher of that window, ``F = λI + (1/m) Σ_i g_i g_iᵀ`` (λ = ``damping``),
    without ever forming the ``d × d`` matrix. By Woodbury::

        F⁻¹x = (x − Gᵀ (mλ I_m + G Gᵀ)⁻¹ G x) / λ

    Every refresh step (every step by default) the current gradient replaces the oldest row, so it
    is part of ``F``, and is then preconditioned. The buffer starts at zero: an unfilled row is a
    zero gradient, which is exactly "fewer gradients so far" with the same ``1/m``.

    Relation to the paper's dynamic algorithm: Frantar et al. replace the oldest gradient, update
    the ``m × m`` Gram matrix ``G Gᵀ`` with one ``(m × d)·d`` product and rebuild ``m × m``
    coefficients in ``O(m³)``; an inverse-Fisher-vector product then costs two ``O(md)`` products.
    Here the same Gram update feeds a Cholesky factorization of ``mλ I_m + G Gᵀ`` (``O(m³)``) and
    the same two products (``G x``, reused from the Gram update for the gradient just added, and
    ``Gᵀ c``) give the same result. The per-step work is ``O(md + m³)`` per layer, as in the paper;
    the ``m × m`` factorization is independent of ``d``, so it is small next to the gradient work
    only for layers with ``d ≫ m²`` (for small layers it dominates, as in the original).

    Differences from the authors' optimizer: the window is kept per layer (block-diagonal over
    the preconditioned layers; other parameters stay first-order) rather than over the whole
    model, and the direction is handed to the first-order optimizer, whose learning rate (and
    momentum, weight decay) apply; the authors' optimizer took ``-lr·F⁻¹g`` itself.

    Memory: ``m × d`` per layer — ``m`` copies of the model's preconditioned gradients (1024 by
    default), which is why the Eva paper leaves M-FAC out of its memory comparison (Table 5).

    Numerics: the factorization never raises (``cholesky_ex``, no host synchronisation); if it
    fails, the layer's direction becomes NaN. In float32, rounding in ``x − Gᵀc`` is amplified by
    ``1/λ``, so the relative error grows like ``ε·‖g‖²/λ``: with large gradients, raise ``damping``.

    Args:
        num_grads: ``m``, the window length, an integer ≥ 1. Default 1024 (the paper's).
        **options: As :class:`~eva.preconditioner.Preconditioner`, with the defaults
            ``damping=1e-5`` (λ; the M-FAC authors' optimizer code) and ``scaling=None`` (the
            direction is used as it is; the first-order optimizer's learning rate scales it).
            ``update_interval``: the current gradient enters the window every this many steps
            (default 1, as in the paper); the factorization of the last refresh is used in
            between. No hooks; ``running_avg`` is not used.

    Raises:
        ValueError: ``num_grads`` not an integer ≥ 1, or a hyper-parameter of the base class.
    """

    defaults: ClassVar[Options] = Options(damping=1e-5, scaling=None)
    uses_gradient_statistics = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        num_grads: int = 1024,
        **options: Any,
    ) -> None:
        check_int("num_grads", num_grads)
        super().__init__(model, optimizer, **options)
        self.num_grads = num_grads
        # gradients added so far per layer (host ints: the next row, count % m, needs no sync)
        self.counts = {layer.name: 0 for layer in self.layers}
        self._fresh: dict[str, tuple[Tensor, Tensor]] = {}

    def gradient_statistics(self, layer: Layer, grad: Tensor) -> dict[str, Tensor]:
        """The gradient itself, on refresh steps."""
        return {"grad": grad} if self.refresh_step else {}

    def update_states(
        self, updates: list[tuple[Layer, dict[str, Tensor], dict[str, Tensor]]]
    ) -> None:
        """Add each layer's gradient to its window (no running average)."""
        for layer, state, current in updates:
            self._add_gradient(layer, state, current["grad"])

    def _add_gradient(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> None:
        """Put the gradient into the oldest row, update ``G Gᵀ`` in ``O(md)`` and refactorize."""
        g = grad.flatten()
        m = self.num_grads
        if "grads" not in state:
            state["grads"] = g.new_zeros(m, g.numel())
            state["gram"] = g.new_zeros(m, m)
        buf, gram = state["grads"], state["gram"]
        j = self.counts[layer.name] % m
        buf[j] = g
        row = buf @ g
        gram[j] = row
        gram[:, j] = row
        system = gram.clone()
        system.diagonal().add_(m * self.damping)
        state["chol"] = torch.linalg.cholesky_ex(system).L
        self.counts[layer.name] += 1
        self._fresh[layer.name] = (grad, row)  # G g of the gradient just added, for precondition

    def ready(self, state: dict[str, Tensor]) -> bool:
        """A layer is preconditioned once its window holds a gradient."""
        return "chol" in state

    def precondition(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> Tensor:
        """``F⁻¹ g`` by Woodbury, with the ``m × m`` system solved by its Cholesky factor."""
        x = grad.flatten()
        buf = state["grads"]
        fresh = self._fresh.pop(layer.name, None)
        gx = fresh[1] if fresh is not None and fresh[0] is grad else buf @ x
        coef = torch.cholesky_solve(gx.unsqueeze(1), state["chol"]).squeeze(1)
        return ((x - coef @ buf) / self.damping).view_as(grad)

    def state_dict(self) -> dict[str, Any]:
        """The base state (windows, Gram matrices, factors) plus the per-layer gradient counts."""
        state_dict = super().state_dict()
        state_dict["grad_counts"] = dict(self.counts)
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` of an :class:`MFAC` with the same ``num_grads``."""
        if "grad_counts" not in state_dict:
            raise ValueError("state_dict has no 'grad_counts': not the state_dict of an MFAC")
        for name, state in state_dict["layers"].items():
            if "grads" in state and state["grads"].shape[0] != self.num_grads:
                raise ValueError(
                    f"num_grads: state_dict layer {name!r} holds {state['grads'].shape[0]} "
                    f"gradients, this MFAC has num_grads={self.num_grads}"
                )
        super().load_state_dict(state_dict)
        self.counts = {
            layer.name: int(state_dict["grad_counts"][layer.name]) for layer in self.layers
        }
        self._fresh.clear()

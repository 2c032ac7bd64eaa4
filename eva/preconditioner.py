"""The interface every preconditioner shares, its step and its persistence.

A preconditioner wraps a model and its first-order optimizer. Hooks on the supported layers keep
only the statistics the algorithm needs (:mod:`eva.capture`); :meth:`Preconditioner.step` then,
after ``loss.backward()`` and before ``optimizer.step()``:

1. on refresh steps (every ``update_interval``-th), takes the statistics collected since the
   last step, averaged across workers, and folds them into the running state (Eq. 14–15);
2. preconditions every layer's gradient with the algorithm's own equation;
3. applies the step-size control (``scaling``: KL clipping Eq. 16, KL normalization §4.1,
   grafting §4.2, or none) over all layers;
4. writes the result back into ``.grad`` in place.

An algorithm subclass declares which statistics it needs (``statistics_needed``,
``uses_gradient_statistics``) and implements ``precondition``; it may extend ``update_states``
(e.g. to refresh inverses). Steps 2–4 may also run as one in-place pass: a subclass that can
provides ``in_place_operands`` and ``step_in_place`` (the rank-one family,
:class:`eva.rank_one.RankOnePreconditioner`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eva.capture import StatisticsCapture
from eva.comm import Reducer, default_reducer
from eva.layers import Layer, find_layers
from eva.options import OptionAttribute, Options
from eva.profiling import (
    GATHER_GRADIENTS,
    GRADIENT_STATISTICS,
    PRECONDITION,
    REDUCE_STATISTICS,
    SCALING,
    STEP,
    UPDATE_STATE,
    WRITE_BACK,
    profile_range,
)
from eva.scaling import Scaling, apply_scaling
from eva.statistics import ConvFactors


class Preconditioner:
    """Base class: layer discovery, statistics capture, running averages, scaling, state dict.

    Every algorithm is built as ``Cls(model, optimizer, **options)`` with the shared options below
    (an algorithm's own :attr:`defaults` replace some of these defaults; its docstring says which)
    plus, for some, a few keyword arguments of their own. The options are validated into
    :attr:`options` (an :class:`~eva.options.Options`) and readable as attributes
    (``pre.damping``); ``enabled`` alone may change afterwards.

    Args:
        model: The model whose ``nn.Linear`` / ``nn.Conv2d`` layers (subclasses included) are
            preconditioned; other parameters are left to the optimizer.
        optimizer: The first-order optimizer that takes the step. Its
            ``param_groups[0]["lr"]`` is the α of KL clipping (Eq. 16), read at every step.
        damping: γ > 0. Default 0.03.
        running_avg: ξ ∈ (0, 1], the weight of the *current* statistics in the running average
            (Eq. 14–15); the first refresh takes the current statistics as they are. ``None``
            (where an algorithm allows it) sums the statistics instead. Default 0.95.
        kl_clip: κ ≥ 0 of KL clipping (Eq. 16); ``None`` disables clipping. Default 0.001.
        scaling: ``"kl_clip"`` (Eq. 16), ``"kl_norm"`` (§4.1), ``"graft"`` (§4.2) or ``None``.
            Default ``"kl_clip"``.
        update_interval: Second-order state is refreshed every this many steps. Default 1.
        skip_layers: ``fnmatch`` patterns of module names (or class names) to leave first-order.
            Default none.
        stat_batch: Use only the first ``stat_batch`` samples of each local batch for statistics
            (the Eva authors' code used 16; for sequence inputs ``(batch, sequence, d)``: whole
            sequences); ``None`` (default) uses the whole local batch.
        conv_factors: How convolutions form Kronecker factors (K-FAC, FOOF): ``"reduce"``
            (default) or ``"expand"``; see :mod:`eva.statistics`.
        enabled: When ``False``, :meth:`step` and the hooks do nothing, so training is exactly
            the first-order optimizer's. Can be toggled at any time via the attribute.
        reducer: How statistics are averaged across workers; default: all-reduce when
            ``torch.distributed`` is initialised with more than one process, else nothing.
        overlap_comm: With more than one worker, start averaging a layer's statistics in the
            backward pass, as soon as they are complete, instead of in :meth:`step`. A layer is
            complete in its output-gradient hook once the gradients of all its forward calls
            of this step (outside recomputations) have arrived. Layers are bucketed in the
            reverse order of ``model.modules()`` (the usual backward order; a layer reached
            early waits for those before it) up to the reducer's ``bucket_bytes``, and each
            full bucket is all-reduced asynchronously; :meth:`step` waits, averages what is
            left, and continues with the same numbers as without overlap. A layer that gets new
            statistics after it was sent (gradient accumulation over several micro-batches, an
            activation-checkpointing recompute) makes everything sent so far in this step be
            sent again, so the last micro-batch's backward carries the communication. All
            workers must run the same forward and backward passes per step (as DDP requires).
            Only hook statistics are concerned: algorithms whose statistics come from the
            averaged gradient (Eva-s, Shampoo, M-FAC) communicate nothing. A reducer without
            ``average_async`` (see :mod:`eva.comm`) averages synchronously in :meth:`step`.
            ``False`` averages everything in :meth:`step`. Default ``True``.

    Raises:
        ValueError: a hyper-parameter out of range, or a model with no supported layer.
        TypeError: an option no preconditioner knows.
    """

    defaults: ClassVar[Options] = Options()
    """The algorithm's defaults: the shared ones with the algorithm's own replacements."""
    statistics_needed: ClassVar[tuple[str, ...]] = ()
    """Which per-batch statistics the hooks collect: a subset of ``a_mean``, ``g_mean`` (Eq. 10),
    ``a_factor``, ``g_factor`` (Eq. 4)."""
    uses_gradient_statistics: ClassVar[bool] = False
    """``True``: :meth:`gradient_statistics` is called for every layer at every step (the
    gradients are then gathered even for an in-place step)."""
    include_bias: ClassVar[bool] = True
    """``True``: the layer's gradient is the matrix ``G`` with the bias column; ``False``: the
    weight gradient as its own tensor (bias left first-order)."""
    allow_running_sum: ClassVar[bool] = False
    """``True``: ``running_avg=None`` (running sums) is allowed."""
    a_mean_unused_if_g_mean_zero: ClassVar[bool] = False
    """``True`` where the equation does not use ā while b̄'s running average is exactly zero
    (Eva, Eq. 13: ``P = G/γ``); :mod:`eva.capture` then skips reading ā where a BatchNorm makes
    b̄ zero by construction (not with ``stat_batch``)."""

    damping: float = OptionAttribute()  # type: ignore[assignment]
    running_avg: float | None = OptionAttribute()  # type: ignore[assignment]
    kl_clip: float | None = OptionAttribute()  # type: ignore[assignment]
    scaling: Scaling = OptionAttribute()  # type: ignore[assignment]
    update_interval: int = OptionAttribute()  # type: ignore[assignment]
    stat_batch: int | None = OptionAttribute()  # type: ignore[assignment]
    conv_factors: ConvFactors = OptionAttribute()  # type: ignore[assignment]
    overlap_comm: bool = OptionAttribute()  # type: ignore[assignment]

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, **options: Any) -> None:
        opts = self.defaults.override(options, type(self).__name__)
        if opts.running_avg is None and not self.allow_running_sum:
            raise ValueError("running_avg must be in (0, 1], got None")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer)}")
        self.options: Options = opts
        """The validated options (frozen)."""
        self.model = model
        self.optimizer = optimizer
        self.enabled: bool = opts.enabled
        self.reducer: Reducer = opts.reducer or default_reducer()
        self.layers: list[Layer] = find_layers(model, opts.skip_layers)
        if not self.layers:
            raise ValueError(
                "model has no supported layer to precondition (nn.Linear / nn.Conv2d with "
                "groups=1 and a trainable weight, not matched by skip_layers)"
            )
        self.steps = 0
        self.scale_factor: Tensor | None = None
        """The factor the step-size control applied at the last :meth:`step` (ν of Eq. 16 for
        KL clipping, a 0-dim tensor; KL normalization's; one per layer for grafting), or None
        where that step scaled nothing. A diagnostic, left on the device: ν < 1 means the clip
        bound, and the step's size was then set by κ, not by the learning rate."""
        self.state: dict[str, dict[str, Tensor]] = {layer.name: {} for layer in self.layers}
        self.capture = StatisticsCapture(
            model,
            self.layers,
            self.statistics_needed,
            self._capturing,
            self.state,
            include_bias=self.include_bias,
            stat_batch=opts.stat_batch,
            conv_factors=opts.conv_factors,
            reducer=self.reducer,
            overlap_comm=opts.overlap_comm,
            a_mean_unused_if_g_mean_zero=self.a_mean_unused_if_g_mean_zero,
        )
        """The statistics hooks (:class:`~eva.capture.StatisticsCapture`)."""

    @property
    def refresh_step(self) -> bool:
        """Whether the coming :meth:`step` refreshes second-order state (hooks capture)."""
        return self.steps % self.options.update_interval == 0

    def _capturing(self) -> bool:
        return self.enabled and self.steps % self.options.update_interval == 0

    @property
    def lr(self) -> float | Tensor:
        """The optimizer's current learning rate (α of Eq. 16)."""
        return self.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------------ algorithm interface
    def gradient_statistics(self, layer: Layer, grad: Tensor) -> dict[str, Tensor]:
        """Statistics computed from the (already worker-averaged) gradient, at every step, where
        :attr:`uses_gradient_statistics`. They reach :meth:`update_states` together with the hook
        statistics. Default: none."""
        return {}

    def update_states(
        self, updates: list[tuple[Layer, dict[str, Tensor], dict[str, Tensor]]]
    ) -> None:
        """Fold this step's statistics into each ``(layer, state, current)``: Eq. 14–15,
        ``state[key] ← ξ·current + (1 − ξ)·state[key]``, for all layers in one
        ``torch._foreach`` pass; a first statistic is taken as it is. With ``running_avg=None``
        (where allowed) statistics are summed instead. Subclasses extend it (refresh inverses)
        or replace it."""
        old: list[Tensor] = []
        new: list[Tensor] = []
        for _, state, current in updates:
            for key, value in current.items():
                if key in state:
                    old.append(state[key])
                    new.append(value)
                else:
                    state[key] = value.clone()
        if not old:
            return
        if self.running_avg is None:
            torch._foreach_add_(old, new)
        else:
            torch._foreach_lerp_(old, new, self.running_avg)

    def ready(self, state: dict[str, Tensor]) -> bool:
        """Whether a layer's state suffices to precondition (its statistics were seen once)."""
        return all(key in state for key in self.statistics_needed)

    def precondition(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> Tensor:
        """Return the preconditioned gradient ``p`` for ``grad`` (a new tensor, same shape)."""
        raise NotImplementedError

    def precondition_all(self, layers: list[Layer], grads: list[Tensor]) -> list[Tensor]:
        """:meth:`precondition` of every ready layer this step."""
        return [
            self.precondition(layer, self.state[layer.name], g)
            for layer, g in zip(layers, grads, strict=True)
        ]

    def gradient(self, layer: Layer) -> Tensor:
        """The gradient the algorithm acts on: ``G`` with bias column, or the weight tensor."""
        if self.include_bias:
            return layer.grad_matrix()
        return layer.weight.grad.detach()  # type: ignore[union-attr]

    def write_gradient(self, layer: Layer, p: Tensor) -> None:
        """Write ``p`` (shaped like :meth:`gradient`) back into the layer's ``.grad``."""
        if self.include_bias:
            layer.set_grad_matrix(p)
        else:
            layer.weight.grad.copy_(p)  # type: ignore[union-attr]

    # optional: steps 2–4 in one in-place pass
    def in_place_operands(self, layers: list[Layer]) -> list[Tensor] | None:
        """What :meth:`step_in_place` needs per layer of ``layers`` (all with a gradient), or
        ``None`` to take the generic path (:meth:`precondition_all`, scaling, write-back) this
        step. Default: ``None``."""
        return None

    def step_in_place(self, layers: list[Layer], operands: list[Tensor]) -> None:
        """Precondition, scale and write back the ready ``layers`` in place, the same result as
        the generic path; called only where :meth:`in_place_operands` gave operands."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, grad_scale: float | Tensor | None = None) -> None:
        """Precondition the gradients of all handled layers in place.

        Call after ``loss.backward()`` and before ``optimizer.step()``. Layers without a gradient
        this step are left alone. Each part runs in a ``torch.profiler`` range
        (:mod:`eva.profiling`).

        Args:
            grad_scale: The loss scale the backward pass used (``torch.amp.GradScaler``), if any.
                The parameter gradients must already be unscaled (``scaler.unscale_``); the
                output-gradient statistics captured by the hooks are unscaled here.
        """
        with profile_range(STEP):
            self.scale_factor = None
            if self.enabled:
                self._step(grad_scale)
            else:
                self.capture.discard()
            self.steps += 1

    def _step(self, grad_scale: float | Tensor | None) -> None:
        current: dict[str, dict[str, Tensor]] = {}
        if self.statistics_needed and self.refresh_step:
            with profile_range(REDUCE_STATISTICS):
                current = self.capture.collect(grad_scale)
                self.capture.before_update(self.state)
        present = [layer for layer in self.layers if layer.has_grad()]
        operands = self.in_place_operands(present) if present else None
        grads: list[Tensor] = []
        if self.uses_gradient_statistics or operands is None:
            with profile_range(GATHER_GRADIENTS):
                grads = [self.gradient(layer) for layer in present]
        if self.uses_gradient_statistics:
            with profile_range(GRADIENT_STATISTICS):
                for layer, grad in zip(present, grads, strict=True):
                    stats = self.gradient_statistics(layer, grad)
                    if stats:
                        current[layer.name] = current.get(layer.name, {}) | stats
        with profile_range(UPDATE_STATE):
            self.update_states(
                [
                    (layer, self.state[layer.name], stats)
                    for layer in present
                    if (stats := current.get(layer.name))
                ]
            )
        ready = [i for i, layer in enumerate(present) if self.ready(self.state[layer.name])]
        if not ready:
            if present and self.statistics_needed and self.refresh_step and not current:
                raise RuntimeError(self._no_statistics_message(len(present)))
            return
        layers = [present[i] for i in ready]
        if operands is not None:  # P in place: precondition, scale and write in one pass
            with profile_range(PRECONDITION):
                self.step_in_place(layers, [operands[i] for i in ready])
            return
        grads = [grads[i] for i in ready]
        with profile_range(PRECONDITION):
            precond = self.precondition_all(layers, grads)
        with profile_range(SCALING):
            self.scale_factor = apply_scaling(self.scaling, precond, grads, self.lr, self.kl_clip)
        with profile_range(WRITE_BACK):
            for layer, p in zip(layers, precond, strict=True):
                self.write_gradient(layer, p)

    def _no_statistics_message(self, layers: int) -> str:
        """Why a first refresh step found gradients but no statistics: the hooks never ran, and
        going on would silently leave every gradient as it is."""
        return (
            f"{type(self).__name__}.step(): {layers} layers have gradients but no statistics "
            "were captured for any of them: the statistics hooks did not run in the forward "
            "pass (the model was in eval mode, the preconditioner was disabled during it, or "
            "torch.compile reused code compiled before the preconditioner existed: build it "
            "before the compiled model first runs, or set "
            "torch._dynamo.config.skip_nnmodule_hook_guards = False before compiling)"
        )

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically: step count and per-layer state."""
        return {
            "steps": self.steps,
            "layers": {name: dict(state) for name, state in self.state.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; tensors are copied to the device of their layer's weight."""
        layers = state_dict["layers"]
        expected = {layer.name for layer in self.layers}
        if set(layers) != expected:
            missing, extra = sorted(expected - set(layers)), sorted(set(layers) - expected)
            raise ValueError(
                f"state_dict layers do not match: missing {missing}, unexpected {extra}"
            )
        self.steps = int(state_dict["steps"])
        for layer in self.layers:
            device = layer.weight.device
            self.state[layer.name] = {
                k: v.to(device, copy=True) if isinstance(v, Tensor) else v
                for k, v in layers[layer.name].items()
            }
        self.capture.loaded(self.state)

    def remove_hooks(self) -> None:
        """Detach from the model (the preconditioner must not be used afterwards)."""
        self.capture.remove()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(layers={len(self.layers)}, damping={self.damping}, "
            f"running_avg={self.running_avg}, kl_clip={self.kl_clip}, scaling={self.scaling!r}, "
            f"update_interval={self.update_interval})"
        )

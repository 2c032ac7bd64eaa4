"""The machinery every preconditioner shares.

A preconditioner wraps a model and its first-order optimizer. Hooks on the supported layers keep
only the statistics the algorithm needs (means or mean outer products, never the activations);
:meth:`Preconditioner.step` then, after ``loss.backward()`` and before ``optimizer.step()``:

1. on refresh steps (every ``update_interval``-th), averages the statistics collected since the
   last step across workers (with several workers, by default most of this all-reduce already
   ran during the backward pass: ``overlap_comm``) and folds them into the running state
   (Eq. 14–15);
2. preconditions every layer's gradient with the algorithm's own equation;
3. applies the step-size control (``scaling``: KL clipping Eq. 16, KL normalization §4.1,
   grafting §4.2, or none) over all layers;
4. writes the result back into ``.grad`` in place.

An algorithm subclass declares which statistics it needs and implements :meth:`precondition`;
it may extend :meth:`update_state` (e.g. to refresh inverses). Where its equation is a rank-one
correction ``P = s·G + u vᵀ`` (Eva, Eva-f, Eva-s) it also says so (:attr:`rank_one_scale`,
:meth:`rank_one_vector`, :meth:`rank_one_correction`), and steps 2–4 run in place without
forming ``P`` (:mod:`eva.rank_one`); :meth:`precondition` stays the reference (tests compare the
two paths) and serves layouts the in-place path does not take (channels-last gradients).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any, ClassVar, TypedDict

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import Unpack

from eva import rank_one, statistics
from eva.batchnorm import BatchNormFollowers, FollowedOutput, ZeroGradMeans
from eva.comm import OverlappedAverage, Reducer, default_reducer
from eva.layers import Layer, find_layers
from eva.saved_input import HeldInput, held_input
from eva.scaling import SCALINGS, Scaling, apply_scaling
from eva.statistics import CONV_FACTORS, ConvFactors

INPUT_STATS = ("a_mean", "a_factor")
GRAD_STATS = frozenset(("g_mean", "g_factor"))
_NO_PLAN = object()  # a shape not seen yet (Preconditioner._mean_plans)


def _defined_by(cls: type, name: str) -> type:
    """The class in ``cls``'s MRO whose body defines attribute ``name``."""
    return next(c for c in cls.__mro__ if name in vars(c))


def _full_precision(device_type: str) -> AbstractContextManager[object]:
    """Statistics are computed outside autocast; no context object when autocast is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_int(name: str, value: int, low: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer ≥ ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_running_avg(value: float | None, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ξ lies in (0, 1] (or is ``None`` where sums are allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"running_avg must be in (0, 1], got {value!r}")


class Options(TypedDict, total=False):
    """The hyper-parameters every preconditioner accepts (see :class:`Preconditioner`)."""

    damping: float
    running_avg: float | None
    kl_clip: float | None
    scaling: Scaling
    update_interval: int
    skip_layers: str | Iterable[str]
    stat_batch: int | None
    conv_factors: ConvFactors
    enabled: bool
    reducer: Reducer | None
    overlap_comm: bool


SHARED_DEFAULTS: Options = {
    "damping": 0.03,
    "running_avg": 0.95,
    "kl_clip": 0.001,
    "scaling": "kl_clip",
    "update_interval": 1,
    "skip_layers": (),
    "stat_batch": None,
    "conv_factors": "reduce",
    "enabled": True,
    "reducer": None,
    "overlap_comm": True,
}


class Preconditioner:
    """Base class: layer discovery, statistics hooks, running averages, scaling, state dict.

    Every algorithm is built as ``Cls(model, optimizer, **options)`` with the shared options below
    (an algorithm's own ``defaults`` replace some of these defaults; its docstring says which)
    plus, for some, a few keyword arguments of their own.

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

    defaults: ClassVar[Options] = {}
    """The algorithm's own defaults, over :data:`SHARED_DEFAULTS`."""
    statistics_needed: ClassVar[tuple[str, ...]] = ()
    """Which per-batch statistics the hooks collect: a subset of ``a_mean``, ``g_mean`` (Eq. 10),
    ``a_factor``, ``g_factor`` (Eq. 4)."""
    include_bias: ClassVar[bool] = True
    """``True``: the layer's gradient is the matrix ``G`` with the bias column; ``False``: the
    weight gradient as its own tensor (bias left first-order)."""
    allow_running_sum: ClassVar[bool] = False
    a_mean_unused_if_g_mean_zero: ClassVar[bool] = False
    """``True`` where the equation does not use ā while b̄'s running average is exactly zero
    (Eva, Eq. 13: ``P = G/γ``). Where a BatchNorm makes b̄ zero by construction
    (:mod:`eva.batchnorm`) the layer's input is then held until the backward pass
    (:mod:`eva.saved_input`) and, while b̄'s average stays zero, not read at all
    (:class:`~eva.batchnorm.ZeroGradMeans`); not with ``stat_batch``."""
    rank_one_batched: ClassVar[bool] = False
    """``True``: :meth:`rank_one_vector` and :meth:`rank_one_correction` also take every layer at
    once, each state entry (and ``G v``) an ``(L, m)`` stack of zero-padded rows, and give stacks
    with zero padding (:func:`eva.rank_one.row_dot` for the dot products). A subclass that
    redefines either method without setting it again runs layer by layer."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, **options: Unpack[Options]
    ) -> None:
        unknown = sorted(set(options) - set(SHARED_DEFAULTS))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected option(s) {unknown}")
        opts: dict[str, Any] = {**SHARED_DEFAULTS, **self.defaults, **options}
        damping, running_avg, kl_clip = opts["damping"], opts["running_avg"], opts["kl_clip"]
        scaling, update_interval, stat_batch = (
            opts["scaling"], opts["update_interval"], opts["stat_batch"],
        )  # fmt: skip
        conv_factors = opts["conv_factors"]
        check_positive("damping", damping)
        check_running_avg(running_avg, allow_none=self.allow_running_sum)
        if kl_clip is not None and (not isinstance(kl_clip, int | float) or not kl_clip >= 0):
            raise ValueError(f"kl_clip must be >= 0 or None, got {kl_clip!r}")
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
        check_int("update_interval", update_interval)
        if stat_batch is not None:
            check_int("stat_batch", stat_batch)
        if conv_factors not in CONV_FACTORS:
            raise ValueError(f"conv_factors must be one of {CONV_FACTORS}, got {conv_factors!r}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer)}")
        if not isinstance(opts["overlap_comm"], bool):
            raise ValueError(f"overlap_comm must be a bool, got {opts['overlap_comm']!r}")

        self.model = model
        self.optimizer = optimizer
        self.damping = float(damping)
        self.running_avg = None if running_avg is None else float(running_avg)
        self.kl_clip = None if kl_clip is None else float(kl_clip)
        self.scaling: Scaling = scaling  # type: ignore[assignment]
        self.update_interval = update_interval
        self.stat_batch = stat_batch
        self.conv_factors: ConvFactors = conv_factors
        self.enabled: bool = opts["enabled"]
        self.reducer: Reducer = opts["reducer"] or default_reducer()

        self.layers = find_layers(model, opts["skip_layers"])
        if not self.layers:
            raise ValueError(
                "model has no supported layer to precondition (nn.Linear / nn.Conv2d with "
                "groups=1 and a trainable weight, not matched by skip_layers)"
            )
        self.steps = 0
        self.state: dict[str, dict[str, Tensor]] = {layer.name: {} for layer in self.layers}
        self._pending: dict[str, dict[str, list[Any]]] = {layer.name: {} for layer in self.layers}
        self._rank_one_rows: dict[tuple, Any] = {}  # eva.rank_one's stacks, kept between steps
        self.overlap_comm: bool = opts["overlap_comm"]
        self._overlap: OverlappedAverage | None = None
        if self.overlap_comm and self.statistics_needed and self.reducer.world_size > 1:
            order = [layer.name for layer in reversed(self.layers)]
            self._overlap = OverlappedAverage(self.reducer, order)
        # output-gradient hooks: for the statistics, or to count arrivals (overlap_comm)
        self._output_grad_hooks = (
            not GRAD_STATS.isdisjoint(self.statistics_needed) or self._overlap is not None
        )
        # per layer, this step: output-gradient hooks registered by forwards outside a backward
        # pass (recomputations excluded), and output-gradient hooks that fired
        self._grads_expected = dict.fromkeys(self._pending, 0)
        self._grads_seen = dict.fromkeys(self._pending, 0)
        self._handles: list[RemovableHandle] = []
        # per layer, input shape -> statistics.MeanPlan (None: the general route), where ā is
        # the only input statistic and the whole batch is read
        self._mean_plans: dict[str, dict[torch.Size, statistics.MeanPlan | None]] = {}
        if stat_batch is None and set(self.statistics_needed) & set(INPUT_STATS) == {"a_mean"}:
            self._mean_plans = {layer.name: {} for layer in self.layers}
        # b̄ = 0 without reading the gradient where a BatchNorm alone takes a layer's output
        self._batchnorm: BatchNormFollowers | None = None
        if "g_mean" in self.statistics_needed and "g_factor" not in self.statistics_needed:
            self._batchnorm = BatchNormFollowers(model)
        # ā not read while b̄'s average is exactly zero (one decision on every worker: the
        # zero test must not depend on the local batch size, as it does with stat_batch)
        self._zero_g_means: ZeroGradMeans | None = None
        if self._batchnorm is not None and self.a_mean_unused_if_g_mean_zero and stat_batch is None:
            self._zero_g_means = ZeroGradMeans(self.state)
        if self.statistics_needed:
            for layer in self.layers:
                self._handles.append(
                    layer.module.register_forward_hook(partial(self._forward_hook, layer))
                )

    # ------------------------------------------------------------------ statistics capture
    @property
    def refresh_step(self) -> bool:
        """Whether the coming :meth:`step` refreshes second-order state (hooks capture)."""
        return self.steps % self.update_interval == 0

    def _capturing(self, module: nn.Module) -> bool:
        return self.enabled and self.refresh_step and module.training and torch.is_grad_enabled()

    def _accumulate(self, layer: Layer, key: str, value: Tensor, count: int = 1) -> None:
        """Add ``value`` to this step's ``key`` of ``layer``; ``count=0`` for a placeholder that
        keeps the statistics' layout but does not enter their mean."""
        if self._overlap is not None and layer.name in self._overlap:
            self._overlap.invalidate()  # its statistics already left: send again
        slot = self._pending[layer.name].get(key)
        if slot is None:
            self._pending[layer.name][key] = [value, count]
        else:
            slot[0] = slot[0] + value
            slot[1] += count

    def _prepare(self, layer: Layer, t: Tensor) -> Tensor:
        t = t.detach()
        batched = t.dim() == 4 if layer.is_conv else t.dim() >= 2
        if self.stat_batch is not None and batched:
            t = t[: self.stat_batch]
        return t.to(layer.weight.dtype)

    def _forward_hook(self, layer: Layer, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if not self._capturing(module):
            return
        hooked = self._output_grad_hooks and output.requires_grad
        held = None  # the input, where ā is read in the backward pass (eva.saved_input)
        if hooked and self._zero_g_means is not None:
            held = held_input(module, inputs[0])
        if held is None:
            self._input_statistics(layer, module, inputs[0])
        if hooked:
            followed = None
            if self._batchnorm is not None and not statistics.compiling():
                followed = self._batchnorm.expect(output, layer.is_conv)
            output.register_hook(partial(self._grad_hook, layer, followed, held))
            # a forward run by the autograd engine is an activation-checkpointing recompute,
            # whose output gradient may never be computed (non-reentrant checkpoints)
            if self._overlap is not None and torch._C._current_graph_task_id() == -1:
                self._grads_expected[layer.name] += 1

    def _input_statistics(self, layer: Layer, module: nn.Module, x: Tensor) -> None:
        plans = self._mean_plans.get(layer.name)
        if plans is not None:  # ā alone, whole batch: the prepared route (most calls)
            plan = plans.get(x.shape, _NO_PLAN)
            if plan is _NO_PLAN:
                if len(plans) >= 8:  # input shapes keep changing: keep the latest
                    plans.clear()
                same_dtype = x.dtype == layer.weight.dtype  # else the general route casts
                plan = plans[x.shape] = statistics.mean_plan(module, x) if same_dtype else None
            if plan is not None and plan.fits(x):
                bias = layer.has_bias and self.include_bias
                self._accumulate(layer, "a_mean", plan(x.detach(), bias))
                return
        with _full_precision(x.device.type):
            self._read_input_statistics(layer, module, x)

    def _read_input_statistics(self, layer: Layer, module: nn.Module, x: Tensor) -> None:
        x = self._prepare(layer, x)
        bias = layer.has_bias and self.include_bias
        if "a_mean" in self.statistics_needed:
            self._accumulate(layer, "a_mean", statistics.input_mean(module, x, bias))
        if "a_factor" in self.statistics_needed:
            factor = statistics.input_factor(module, x, bias, self.conv_factors)
            self._accumulate(layer, "a_factor", factor)

    def _grad_hook(
        self,
        layer: Layer,
        followed: FollowedOutput | None,
        held: HeldInput | None,
        grad_output: Tensor,
    ) -> None:
        zero_mean = (
            followed is not None
            and followed.take_is_zero_mean(grad_output)
            and (self.stat_batch is None or grad_output.shape[0] <= self.stat_batch)
        )
        x = held.take() if held is not None else None
        with _full_precision(grad_output.device.type):
            if x is not None:
                zeros = self._zero_g_means
                if zero_mean and zeros is not None and layer.name in zeros.zero:
                    self._accumulate(layer, "a_mean", self._unread_a_mean(layer, x), count=0)
                else:
                    self._input_statistics(layer, layer.module, x)
            self._grad_statistics(layer, grad_output, zero_mean)
        if self._overlap is not None:
            self._send_if_complete(self._overlap, layer.name)

    def _unread_a_mean(self, layer: Layer, x: Tensor) -> Tensor:
        """Zeros in place of an ā not read (:class:`~eva.batchnorm.ZeroGradMeans`)."""
        weight = layer.weight
        width = weight.numel() // weight.shape[0] + (layer.has_bias and self.include_bias)
        return x.new_zeros(width, dtype=weight.dtype)

    def _send_if_complete(self, overlap: OverlappedAverage, name: str) -> None:
        """Start averaging a layer's statistics if they are complete for this step: every
        statistic is present and every output gradient expected from this step's forwards has
        arrived (``overlap_comm``)."""
        self._grads_seen[name] += 1
        pending = self._pending[name]
        if (
            self._grads_seen[name] >= self._grads_expected[name]
            and all(key in pending for key in self.statistics_needed)
            and name not in overlap
        ):
            overlap.submit(name, self._means(pending))

    @staticmethod
    def _means(pending: dict[str, list[Any]]) -> dict[str, Tensor]:
        """The mean over micro-batches of each accumulated statistic (tensors of this step's
        own: a single micro-batch's statistic is handed over as it is)."""
        return {
            key: total if count <= 1 else total / count for key, (total, count) in pending.items()
        }

    def _clear_pending(self) -> None:
        """Forget this step's statistics and hook counts."""
        for name, pending in self._pending.items():
            pending.clear()
            self._grads_expected[name] = self._grads_seen[name] = 0

    def _grad_statistics(self, layer: Layer, grad_output: Tensor, zero_mean: bool = False) -> None:
        """``zero_mean``: b̄ is zero by construction (:mod:`eva.batchnorm`), not computed."""
        if zero_mean:
            width = grad_output.shape[1]
            zero = grad_output.new_zeros(width, dtype=layer.weight.dtype)
            self._accumulate(layer, "g_mean", zero)
            return
        if self._zero_g_means is not None:
            self._zero_g_means.read(layer.name)
        gy = self._prepare(layer, grad_output)
        if "g_mean" in self.statistics_needed:
            self._accumulate(layer, "g_mean", statistics.grad_mean(layer.module, gy))
        if "g_factor" in self.statistics_needed:
            factor = statistics.grad_factor(layer.module, gy, self.conv_factors)
            self._accumulate(layer, "g_factor", factor)

    def _current_statistics(
        self, grad_scale: float | Tensor | None
    ) -> dict[str, dict[str, Tensor]]:
        """The statistics of this step (means over micro-batches), averaged across workers.

        Each worker's output gradients are those of its *local* batch-mean loss, ``world_size``
        times those of the global batch-mean loss that data-parallel training optimises (DDP
        averages the parameter gradients). After averaging, ``g_mean`` is divided by
        ``world_size`` and ``g_factor`` by its square, so that N workers compute exactly what one
        process computes on the whole batch. A loss scale (fp16 mixed precision) is divided out
        the same way.
        """
        if self._overlap is None:
            current = {name: self._means(p) for name, p in self._pending.items() if p}
            self.reducer.average([t for stats in current.values() for t in stats.values()])
        else:  # most are on their way since the backward pass (overlap_comm): wait, send the rest
            rest = {
                name: self._means(p)
                for name, p in self._pending.items()
                if p and name not in self._overlap
            }
            current = {k: dict(v) for k, v in self._overlap.finish(rest).items()}
        scale = self.reducer.world_size * (1.0 if grad_scale is None else grad_scale)
        if grad_scale is not None or self.reducer.world_size > 1:
            for stats in current.values():
                for key, power in (("g_mean", 1), ("g_factor", 2)):
                    if key in stats:
                        stats[key].div_(scale**power)
        self._clear_pending()
        return current

    # ------------------------------------------------------------------ algorithm interface
    def running_average(self, state: dict[str, Tensor], key: str, current: Tensor) -> None:
        """Eq. 14–15: ``state[key] ← ξ·current + (1 − ξ)·state[key]``; the first one as is.

        With ``running_avg=None`` (where the algorithm allows it) statistics are summed instead.
        """
        old = state.get(key)
        if old is None:
            state[key] = current.clone()
        elif self.running_avg is None:
            old.add_(current)
        else:
            old.lerp_(current, self.running_avg)

    def update_state(
        self, layer: Layer, state: dict[str, Tensor], current: dict[str, Tensor]
    ) -> None:
        """Fold this refresh step's statistics into the layer's state (default: Eq. 14–15)."""
        for key, value in current.items():
            self.running_average(state, key, value)

    _UPDATE_METHODS = ("update_state", "running_average")
    """Methods whose base-class definitions make :meth:`update_states` one foreach pass."""

    def update_states(
        self, updates: list[tuple[Layer, dict[str, Tensor], dict[str, Tensor]]]
    ) -> None:
        """:meth:`update_state` of every ``(layer, state, current)``; when a class keeps the
        default Eq. 14–15, all layers' running averages are one ``torch._foreach`` pass."""
        cls = type(self)
        if any(_defined_by(cls, m) is not Preconditioner for m in self._UPDATE_METHODS):
            for layer, state, current in updates:
                self.update_state(layer, state, current)
            return
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

    def precondition(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> Tensor:
        """Return the preconditioned gradient ``p`` for ``grad`` (a new tensor, same shape)."""
        raise NotImplementedError

    def precondition_all(self, layers: list[Layer], grads: list[Tensor]) -> list[Tensor]:
        """:meth:`precondition` of every ready layer this step."""
        return [
            self.precondition(layer, self.state[layer.name], g)
            for layer, g in zip(layers, grads, strict=True)
        ]

    # optional: P = s·G + u vᵀ (eva.rank_one)
    @property
    def rank_one_scale(self) -> float:
        """``s`` of ``P = s·G + u vᵀ``, the same for every layer."""
        raise NotImplementedError

    def rank_one_vector(self, state: dict[str, Tensor]) -> Tensor:
        """``v`` of ``P = s·G + u vᵀ`` for a layer (length ``d_in`` [+ 1 with a bias])."""
        raise NotImplementedError

    def rank_one_correction(self, state: dict[str, Tensor], gv: Tensor) -> Tensor:
        """``u`` of ``P = s·G + u vᵀ`` for a layer, given ``G v``."""
        raise NotImplementedError

    def _rank_one_applies(self) -> bool:
        """Whether the step runs in place (:mod:`eva.rank_one`): the class gives the rank-one
        form of its own :meth:`precondition` (a subclass that changes the math loses it)."""
        cls = type(self)
        form, single = _defined_by(cls, "rank_one_correction"), _defined_by(cls, "precondition")
        return form is not Preconditioner and issubclass(form, single)

    def _rank_one_batched(self) -> bool:
        """Whether :attr:`rank_one_batched` was set where the rank-one form was defined (or
        below)."""
        cls = type(self)
        flag = _defined_by(cls, "rank_one_batched")
        form = (_defined_by(cls, m) for m in ("rank_one_vector", "rank_one_correction"))
        return cls.rank_one_batched and all(issubclass(flag, f) for f in form)

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

    # ------------------------------------------------------------------ the step
    @property
    def lr(self) -> float | Tensor:
        """The optimizer's current learning rate (α of Eq. 16)."""
        return self.optimizer.param_groups[0]["lr"]

    @torch.no_grad()
    def step(self, grad_scale: float | Tensor | None = None) -> None:
        """Precondition the gradients of all handled layers in place.

        Call after ``loss.backward()`` and before ``optimizer.step()``. Layers without a gradient
        this step are left alone.

        Args:
            grad_scale: The loss scale the backward pass used (``torch.amp.GradScaler``), if any.
                The parameter gradients must already be unscaled (``scaler.unscale_``); the
                output-gradient statistics captured by the hooks are unscaled here.
        """
        if not self.enabled:
            if self._overlap is not None:
                self._overlap.finish({})  # complete (and discard) what the hooks started
            self._clear_pending()
            self.steps += 1
            return
        refresh = self.refresh_step
        current = {}
        if self.statistics_needed and refresh:
            current = self._current_statistics(grad_scale)
            if self._zero_g_means is not None:
                self._zero_g_means.restart_averages(self.state)
        present = [layer for layer in self.layers if layer.has_grad()]
        weights = [rank_one.weight_matrix(x) for x in present] if self._rank_one_applies() else []
        in_place = (
            bool(present) and len(weights) == len(present) and all(w is not None for w in weights)
        )
        gradient_stats = _defined_by(type(self), "gradient_statistics") is not Preconditioner
        grads = [self.gradient(x) for x in present] if gradient_stats or not in_place else []
        self.update_states(
            [
                (layer, self.state[layer.name], stats)
                for i, layer in enumerate(present)
                if (
                    stats := current.get(layer.name, {})
                    | (self.gradient_statistics(layer, grads[i]) if gradient_stats else {})
                )
            ]
        )
        ready = [i for i, x in enumerate(present) if self.ready(self.state[x.name])]
        layers = [present[i] for i in ready]
        if in_place and ready:  # P = s·G + u vᵀ: precondition, scale and write in place
            rank_one.rank_one_step(self, layers, [weights[i] for i in ready])  # type: ignore[misc]
        elif ready:
            grads = [grads[i] for i in ready]
            precond = self.precondition_all(layers, grads)
            apply_scaling(self.scaling, precond, grads, self.lr, self.kl_clip)
            for layer, p in zip(layers, precond, strict=True):
                self.write_gradient(layer, p)
        self.steps += 1

    def gradient_statistics(self, layer: Layer, grad: Tensor) -> dict[str, Tensor]:
        """Statistics computed from the (already worker-averaged) gradient, at every step.

        Gradient-based algorithms (Eva-s, Shampoo, M-FAC) return theirs here; they reach
        :meth:`update_state` together with the hook statistics. Default: none.
        """
        return {}

    def ready(self, state: dict[str, Tensor]) -> bool:
        """Whether a layer's state suffices to precondition (its statistics were seen once)."""
        return all(key in state for key in self.statistics_needed)

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
        if self._zero_g_means is not None:
            self._zero_g_means.reset(self.state)

    def remove_hooks(self) -> None:
        """Detach from the model (the preconditioner must not be used afterwards)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._batchnorm is not None:
            self._batchnorm.remove()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(layers={len(self.layers)}, damping={self.damping}, "
            f"running_avg={self.running_avg}, kl_clip={self.kl_clip}, scaling={self.scaling!r}, "
            f"update_interval={self.update_interval})"
        )

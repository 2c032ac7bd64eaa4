"""Statistics capture: the hooks that keep a preconditioner's per-batch statistics.

A :class:`StatisticsCapture` puts a forward hook on every preconditioned layer and, where
gradient statistics are needed, an output-gradient hook on each forward call's output. The hooks
keep only what the algorithm asks for (``a_mean``, ``g_mean`` of Eq. 10; ``a_factor``,
``g_factor`` of Eq. 4), summed over the micro-batches of a step, never the activations.
:meth:`StatisticsCapture.collect` then hands :meth:`~eva.preconditioner.Preconditioner.step`
this step's means, averaged across workers.

It also holds the shortcuts around the hooks:

- **b̄ = 0 by construction** where a BatchNorm alone takes a layer's output
  (:mod:`eva.batchnorm`), and, for algorithms that then do not use ā (Eva: ``P = G/γ``), the
  input held until the backward pass (:mod:`eva.saved_input`) and read only where b̄ is not zero
  (:class:`~eva.batchnorm.ZeroGradMeans`). In a model without BatchNorm nothing is held: ā is
  read in the forward hook, right after the layer's input was written (still in cache);
- **b̄ from the bias gradient** in a model without BatchNorm: a linear layer's autograd node
  sums the output-gradient rows for its bias anyway, and b̄ is that sum over the number of rows
  (:func:`bias_gradient_node`), with no pass of its own over the output gradient (the largest
  tensors the hooks would read: a GPT's 4096-row MLP gradients);
- **prepared ā routes** per input shape (:class:`~eva.statistics.MeanPlan`) where ā is the only
  input statistic and the whole batch is read;
- **overlapped communication** (``overlap_comm``): a layer's statistics start their all-reduce
  in the backward pass as soon as they are complete (:class:`~eva.comm.OverlappedAverage`).

Inspection API (read by tests, documented, not for changing): :attr:`~StatisticsCapture.pending`,
:attr:`~StatisticsCapture.batchnorm`, :attr:`~StatisticsCapture.zero_grad_means`,
:attr:`~StatisticsCapture.overlap`, :attr:`~StatisticsCapture.mean_plans`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from eva import statistics
from eva.batchnorm import BatchNormFollowers, FollowedOutput, ZeroGradMeans
from eva.comm import OverlappedAverage, Reducer
from eva.layers import Layer
from eva.profiling import BACKWARD_HOOKS, FORWARD_HOOKS, profile_range
from eva.saved_input import HeldInput, held_input
from eva.statistics import ConvFactors

INPUT_STATS = ("a_mean", "a_factor")
GRAD_STATS = frozenset(("g_mean", "g_factor"))
_NO_PLAN = object()  # a shape not seen yet (StatisticsCapture.mean_plans)

_VIEWS = frozenset(("ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0"))


def bias_gradient_node(module: nn.Module, output: Tensor) -> Any | None:
    """The autograd node of this call of ``module`` that computes its bias gradient, or None.

    ``nn.Linear`` runs as ``addmm(bias, x, Wᵀ)`` (a view of it for inputs with more than two
    dimensions), and autograd's ``AddmmBackward0`` hands the bias the sum of the output-gradient
    rows, ``Σ_i ∂L/∂y_i``: b̄ of Eq. 10 times the number of rows. A post-hook on that node reads
    b̄ without another pass over the output gradient. Returned only where the node is exactly
    that: the output (or a view of it) from ``addmm`` whose first input is the layer's own
    trainable bias (not a cast copy under autocast, not a subclass's extra term; outside
    ``torch.compile``).
    """
    bias = getattr(module, "bias", None)
    node = output.grad_fn
    if bias is None or not bias.requires_grad or node is None or statistics.compiling():
        return None
    if node.name() in _VIEWS:
        node = node.next_functions[0][0]
        if node is None:
            return None
    if node.name() != "AddmmBackward0":
        return None
    accumulate = node.next_functions[0][0]
    return node if getattr(accumulate, "variable", None) is bias else None


Pending = dict[str, list[Any]]
"""One layer's statistics of this step: key → ``[sum over micro-batches, count]``."""


def _full_precision(device_type: str) -> AbstractContextManager[object]:
    """Statistics are computed outside autocast; no context object when autocast is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


def _means(pending: Pending) -> dict[str, Tensor]:
    """The mean over micro-batches of each accumulated statistic (tensors of this step's own: a
    single micro-batch's statistic is handed over as it is)."""
    return {key: total if count <= 1 else total / count for key, (total, count) in pending.items()}


class StatisticsCapture:
    """The statistics hooks of one preconditioner (see the module docstring).

    Args:
        model: The model (its BatchNorms are watched where b̄ may be zero by construction).
        layers: The preconditioned layers.
        needed: Which statistics to keep (a subset of ``a_mean``, ``g_mean``, ``a_factor``,
            ``g_factor``); none: no hooks.
        active: Called in each forward hook: whether this step captures (enabled, refresh step).
        states: The preconditioner's per-layer state (for :class:`~eva.batchnorm.ZeroGradMeans`).
        include_bias: ā with the bias's constant 1 where the layer has a bias.
        stat_batch: Statistics from the first ``stat_batch`` samples only; ``None``: all.
        conv_factors: How convolutions form Kronecker factors (:mod:`eva.statistics`).
        reducer: Averages statistics across workers.
        overlap_comm: Start averaging in the backward pass (with more than one worker).
        a_mean_unused_if_g_mean_zero: The algorithm does not use ā while b̄'s average is zero.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[Layer],
        needed: tuple[str, ...],
        active: Callable[[], bool],
        states: dict[str, dict[str, Tensor]],
        *,
        include_bias: bool,
        stat_batch: int | None,
        conv_factors: ConvFactors,
        reducer: Reducer,
        overlap_comm: bool,
        a_mean_unused_if_g_mean_zero: bool,
    ) -> None:
        self.needed = needed
        self.active = active
        self.include_bias = include_bias
        self.stat_batch = stat_batch
        self.conv_factors: ConvFactors = conv_factors
        self.reducer = reducer
        self.pending: dict[str, Pending] = {layer.name: {} for layer in layers}
        """Per layer, this step's statistics so far (:data:`Pending`)."""
        self.overlap: OverlappedAverage | None = None
        """The averages under way since the backward pass (``overlap_comm``, several workers)."""
        if overlap_comm and needed and reducer.world_size > 1:
            self.overlap = OverlappedAverage(reducer, [x.name for x in reversed(layers)])
        # output-gradient hooks: for the statistics, or to count arrivals (overlap_comm)
        self._grad_hooks = not GRAD_STATS.isdisjoint(needed) or self.overlap is not None
        # per layer, this step: output-gradient hooks registered by forwards outside a backward
        # pass (recomputations excluded), and output-gradient hooks that fired
        self._grads_expected = dict.fromkeys(self.pending, 0)
        self._grads_seen = dict.fromkeys(self.pending, 0)
        self.mean_plans: dict[str, dict[torch.Size, statistics.MeanPlan | None]] = {}
        """Per layer, input shape → :class:`~eva.statistics.MeanPlan` (``None``: the general
        route); empty unless ā is the only input statistic and the whole batch is read."""
        if stat_batch is None and set(needed) & set(INPUT_STATS) == {"a_mean"}:
            self.mean_plans = {layer.name: {} for layer in layers}
        self.batchnorm: BatchNormFollowers | None = None
        """The BatchNorm watch that records b̄ = 0 without reading the gradient (None where b̄
        is not needed, or K-FAC's factor is)."""
        if "g_mean" in needed and "g_factor" not in needed:
            self.batchnorm = BatchNormFollowers(model)
        # ā not read while b̄'s average is exactly zero (one decision on every worker: the
        # zero test must not depend on the local batch size, as it does with stat_batch)
        self.zero_grad_means: ZeroGradMeans | None = None
        """The layers whose ā is not read (b̄'s average exactly zero), or None where unused."""
        # (only where a BatchNorm may make b̄ zero: elsewhere ā is read in the forward hook,
        # right after the input was written, rather than from memory in the backward pass)
        if (
            self.batchnorm is not None
            and self.batchnorm.handles
            and a_mean_unused_if_g_mean_zero
            and stat_batch is None
        ):
            self.zero_grad_means = ZeroGradMeans(states)
        # b̄ from the bias gradient autograd computes anyway (bias_gradient_node): no BatchNorm
        # to watch, b̄ the only gradient statistic, over the whole batch
        self._bias_route = (
            set(needed) & GRAD_STATS == {"g_mean"}
            and stat_batch is None
            and (self.batchnorm is None or not self.batchnorm.handles)
        )
        self._handles: list[RemovableHandle] = []
        if needed:
            for layer in layers:
                hook = partial(self._forward_hook, layer)
                self._handles.append(layer.module.register_forward_hook(hook))

    # ------------------------------------------------------------------ for the step
    def collect(self, grad_scale: float | Tensor | None) -> dict[str, dict[str, Tensor]]:
        """This step's statistics (means over micro-batches), averaged across workers; the
        pending statistics are cleared.

        Each worker's output gradients are those of its *local* batch-mean loss, ``world_size``
        times those of the global batch-mean loss that data-parallel training optimises (DDP
        averages the parameter gradients). After averaging, ``g_mean`` is divided by
        ``world_size`` and ``g_factor`` by its square, so that N workers compute exactly what one
        process computes on the whole batch. A loss scale (fp16 mixed precision) is divided out
        the same way.
        """
        if self.overlap is None:
            current = {name: _means(p) for name, p in self.pending.items() if p}
            self.reducer.average([t for stats in current.values() for t in stats.values()])
        else:  # most are on their way since the backward pass (overlap_comm): wait, send the rest
            overlap = self.overlap
            rest = {
                name: _means(p) for name, p in self.pending.items() if p and name not in overlap
            }
            current = {k: dict(v) for k, v in self.overlap.finish(rest).items()}
        scale = self.reducer.world_size * (1.0 if grad_scale is None else grad_scale)
        if grad_scale is not None or self.reducer.world_size > 1:
            for stats in current.values():
                for key, power in (("g_mean", 1), ("g_factor", 2)):
                    if key in stats:
                        stats[key].div_(scale**power)
        self.clear()
        return current

    def discard(self) -> None:
        """Forget this step's statistics (completing, unused, what the hooks started to send)."""
        if self.overlap is not None:
            self.overlap.finish({})
        self.clear()

    def clear(self) -> None:
        """Forget this step's statistics and hook counts."""
        for name, pending in self.pending.items():
            pending.clear()
            self._grads_expected[name] = self._grads_seen[name] = 0

    def before_update(self, states: dict[str, dict[str, Tensor]]) -> None:
        """Before this step's running averages (see :class:`~eva.batchnorm.ZeroGradMeans`)."""
        if self.zero_grad_means is not None:
            self.zero_grad_means.restart_averages(states)

    def loaded(self, states: dict[str, dict[str, Tensor]]) -> None:
        """After the preconditioner's state was replaced by a loaded one."""
        if self.zero_grad_means is not None:
            self.zero_grad_means.reset(states)

    def remove(self) -> None:
        """Remove every hook from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.batchnorm is not None:
            self.batchnorm.remove()

    # ------------------------------------------------------------------ the hooks
    def _accumulate(self, layer: Layer, key: str, value: Tensor, count: int = 1) -> None:
        """Add ``value`` to this step's ``key`` of ``layer``; ``count=0`` for a placeholder that
        keeps the statistics' layout but does not enter their mean."""
        if self.overlap is not None and layer.name in self.overlap:
            self.overlap.invalidate()  # its statistics already left: send again
        slot = self.pending[layer.name].get(key)
        if slot is None:
            self.pending[layer.name][key] = [value, count]
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
        if not (self.active() and module.training and torch.is_grad_enabled()):
            return
        with profile_range(FORWARD_HOOKS):
            hooked = self._grad_hooks and output.requires_grad
            held = None  # the input, where ā is read in the backward pass (eva.saved_input)
            if hooked and self.zero_grad_means is not None:
                held = held_input(module, inputs[0])
            if held is None:
                self._input_statistics(layer, module, inputs[0])
            if hooked:
                node = bias_gradient_node(module, output) if self._bias_route else None
                if node is not None:  # b̄ from the bias gradient this call's backward computes
                    rows = output.numel() // output.shape[-1]
                    node.register_hook(partial(self._bias_grad_hook, layer, rows))
                else:
                    followed = None
                    if self.batchnorm is not None and not statistics.compiling():
                        followed = self.batchnorm.expect(output, layer.is_conv)
                    output.register_hook(partial(self._grad_hook, layer, followed, held))
                # a forward run by the autograd engine is an activation-checkpointing recompute,
                # whose output gradient may never be computed (non-reentrant checkpoints)
                if self.overlap is not None and torch._C._current_graph_task_id() == -1:
                    self._grads_expected[layer.name] += 1

    def _input_statistics(self, layer: Layer, module: nn.Module, x: Tensor) -> None:
        plans = self.mean_plans.get(layer.name)
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
            x = self._prepare(layer, x)
            bias = layer.has_bias and self.include_bias
            if "a_mean" in self.needed:
                self._accumulate(layer, "a_mean", statistics.input_mean(module, x, bias))
            if "a_factor" in self.needed:
                factor = statistics.input_factor(module, x, bias, self.conv_factors)
                self._accumulate(layer, "a_factor", factor)

    def _grad_hook(
        self,
        layer: Layer,
        followed: FollowedOutput | None,
        held: HeldInput | None,
        grad_output: Tensor,
    ) -> None:
        with profile_range(BACKWARD_HOOKS):
            zero_mean = (
                followed is not None
                and followed.take_is_zero_mean(grad_output)
                and (self.stat_batch is None or grad_output.shape[0] <= self.stat_batch)
            )
            x = held.take() if held is not None else None
            with _full_precision(grad_output.device.type):
                if x is not None:
                    zeros = self.zero_grad_means
                    if zero_mean and zeros is not None and layer.name in zeros.zero:
                        self._accumulate(layer, "a_mean", self._unread_a_mean(layer, x), count=0)
                    else:
                        self._input_statistics(layer, layer.module, x)
                self._grad_statistics(layer, grad_output, zero_mean)
            if self.overlap is not None:
                self._send_if_complete(self.overlap, layer.name)

    def _bias_grad_hook(
        self, layer: Layer, rows: int, grad_inputs: tuple, grad_outputs: tuple
    ) -> None:
        """b̄ (Eq. 10) of one call: its bias gradient (the sum of the output-gradient rows,
        as the layer's autograd node computed it) over the number of rows."""
        with profile_range(BACKWARD_HOOKS):
            bias_grad = grad_inputs[0]
            if bias_grad is None:  # a backward pass that does not want the bias's gradient
                self._grad_statistics(layer, grad_outputs[0])
            else:
                self._accumulate(layer, "g_mean", bias_grad.detach() / rows)
            if self.overlap is not None:
                self._send_if_complete(self.overlap, layer.name)

    def _unread_a_mean(self, layer: Layer, x: Tensor) -> Tensor:
        """Zeros in place of an ā not read (:class:`~eva.batchnorm.ZeroGradMeans`)."""
        weight = layer.weight
        width = weight.numel() // weight.shape[0] + (layer.has_bias and self.include_bias)
        return x.new_zeros(width, dtype=weight.dtype)

    def _grad_statistics(self, layer: Layer, grad_output: Tensor, zero_mean: bool = False) -> None:
        """``zero_mean``: b̄ is zero by construction (:mod:`eva.batchnorm`), not computed."""
        if zero_mean:
            zero = grad_output.new_zeros(grad_output.shape[1], dtype=layer.weight.dtype)
            self._accumulate(layer, "g_mean", zero)
            return
        if self.zero_grad_means is not None:
            self.zero_grad_means.read(layer.name)
        gy = self._prepare(layer, grad_output)
        if "g_mean" in self.needed:
            self._accumulate(layer, "g_mean", statistics.grad_mean(layer.module, gy))
        if "g_factor" in self.needed:
            factor = statistics.grad_factor(layer.module, gy, self.conv_factors)
            self._accumulate(layer, "g_factor", factor)

    def _send_if_complete(self, overlap: OverlappedAverage, name: str) -> None:
        """Start averaging a layer's statistics if they are complete for this step: every
        statistic is present and every output gradient expected from this step's forwards has
        arrived (``overlap_comm``)."""
        self._grads_seen[name] += 1
        pending = self.pending[name]
        if (
            self._grads_seen[name] >= self._grads_expected[name]
            and all(key in pending for key in self.needed)
            and name not in overlap
        ):
            overlap.submit(name, _means(pending))

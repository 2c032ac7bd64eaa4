"""Layers whose mean output gradient is zero by construction: those that feed only a BatchNorm.

A BatchNorm that normalises with the statistics of the batch it sees (training mode, or no running
statistics) gives its input ``x`` the gradient ``dx = (γ/σ)(dy − mean(dy) − x̂·mean(dy·x̂))``
per channel, the means over that channel's samples and positions. Summed over the same set,
``Σ dx = (γ/σ)(Σ dy − m·mean(dy) − mean(dy·x̂)·Σ x̂) = 0``, because ``Σ x̂ = 0``. So when a
convolution's output (or a 2-D linear layer's) reaches the loss *only* through such a
BatchNorm, its b̄ of Eq. 10 — the mean output gradient over samples and positions — is exactly
zero, and Eva's rank-one correction (Eq. 13) vanishes for that layer: ``P = G/γ``. In float
arithmetic the reduction would return rounding noise of order 1e-8 of the gradient.

:class:`BatchNormFollowers` recognises these layers from the autograd graph, without reading any
data, and the output-gradient hook then records b̄ = 0 instead of reducing the gradient (on a
ResNet or VGG with BatchNorm, every convolution: the backward half of Eva's statistics). The test is
exact rather than heuristic: in the layer's forward hook, the next BatchNorm call takes the
layer's output itself (same tensor object, not modified in place since) and normalises with batch
statistics; in the backward pass, the gradient that reaches the layer's output is the very tensor
that BatchNorm's backward produced. Any other use of the output — a second consumer inside or
outside the model, a hook that replaces the gradient — makes autograd add into a new tensor
(the BatchNorm gradient is held by the check, so autograd cannot accumulate in place into it),
and the layer's b̄ is then computed as usual. It must also be the statistics' whole batch
(``stat_batch`` unset or at least the batch size); ``SyncBatchNorm`` (whose zero sum is over all
workers, not this one) and BatchNorm subclasses with their own ``forward`` are not relied on.
"""

from __future__ import annotations

import weakref
from functools import partial

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from eva.statistics import compiling


class FollowedOutput:
    """One forward call of a layer, as seen by a BatchNorm: the gradient its backward produced
    for the layer's output, while it travels to the layer's output-gradient hook."""

    __slots__ = ("grad",)

    def __init__(self) -> None:
        self.grad: Tensor | None = None

    def take_is_zero_mean(self, grad: Tensor) -> bool:
        """Whether ``grad`` (the gradient reaching the layer's output) is exactly BatchNorm's
        input gradient; forgets it either way."""
        mine, self.grad = self.grad, None
        return mine is not None and grad is mine


def _uses_batch_statistics(bn: _BatchNorm) -> bool:
    """What ``_BatchNorm.forward`` calls ``bn_training``."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def _keep_input_grad(
    followed: FollowedOutput, grad_inputs: tuple[Tensor | None, ...], _: object
) -> None:
    followed.grad = grad_inputs[0]


class ZeroGradMeans:
    """The layers whose running average of b̄ (Eq. 14–15) is known to be exactly zero, without
    reading it: no b̄ yet, or only zeros by construction since the start (or since
    :meth:`reset` from a loaded state).

    Eq. 13 with ``b̄ = 0`` is ``P = G/γ`` whatever ā is, so while a layer stays here Eva does not
    read its input for ā (:attr:`~eva.preconditioner.Preconditioner.a_mean_unused_if_g_mean_zero`):
    its ``a_mean`` stays a zero placeholder. The first b̄ that is actually read (this layer's
    output reaches the loss some other way, or its BatchNorm is in eval mode) takes the layer
    out, and ā's running average then starts from that step's ā, as on a first step.
    """

    def __init__(self, states: dict[str, dict[str, Tensor]]) -> None:
        self.zero: set[str] = set()
        self.restart: set[str] = set()  # left this step: ā's average starts afresh
        self.reset(states)

    def reset(self, states: dict[str, dict[str, Tensor]]) -> None:
        """Recompute from the states (after loading them; reads each ``g_mean`` once)."""
        self.zero = {
            name
            for name, state in states.items()
            if "g_mean" not in state or not bool(state["g_mean"].any())
        }
        self.restart.clear()

    def read(self, name: str) -> None:
        """Layer ``name``'s b̄ was read (not zero by construction) on this step."""
        if name in self.zero:
            self.zero.discard(name)
            self.restart.add(name)

    def restart_averages(self, states: dict[str, dict[str, Tensor]]) -> None:
        """Before this step's running averages: drop the placeholder ā of the layers that left."""
        for name in self.restart:
            states[name].pop("a_mean", None)
        self.restart.clear()


class BatchNormFollowers:
    """Forward hooks on every plain BatchNorm of ``model`` that tie it to the preconditioned
    layer whose output it normalises (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self._last: tuple[weakref.ref[Tensor], int, FollowedOutput] | None = None
        self.handles: list[RemovableHandle] = [
            module.register_forward_hook(self._batchnorm_hook)
            for module in model.modules()
            if isinstance(module, _BatchNorm)
            and not isinstance(module, nn.SyncBatchNorm)
            and type(module).forward is _BatchNorm.forward
        ]

    def expect(self, output: Tensor, is_conv: bool) -> FollowedOutput | None:
        """Called by a layer's forward hook with its output: the record the next BatchNorm
        fills if it takes exactly this output (``None`` where the output's shape rules it out:
        a BatchNorm normalises over dimension 1, b̄ reduces all others only for a convolution's
        4-D output or a linear layer's 2-D one)."""
        if not self.handles or output.dim() != (4 if is_conv else 2):
            self._last = None
            return None
        followed = FollowedOutput()
        self._last = (weakref.ref(output), output._version, followed)
        return followed

    def _batchnorm_hook(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        last, self._last = self._last, None
        if last is None or compiling():
            return
        ref, version, followed = last
        x = inputs[0]
        node = output.grad_fn
        if (
            ref() is x
            and x._version == version
            and node is not None
            and _uses_batch_statistics(module)  # type: ignore[arg-type]
            and node.next_functions[0][0] is x.grad_fn
        ):
            node.register_hook(partial(_keep_input_grad, followed))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

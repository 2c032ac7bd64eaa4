"""Input statistics read in the backward pass, from the input autograd keeps anyway.

A layer's ā (Eq. 10) needs one full read of its input, a stream from memory as long as the
activation. Eva does not need ā at all while the layer's b̄ average is exactly zero (Eq. 13 is
then ``P = G/γ``), but whether this step's b̄ is zero by construction is only known in the
backward pass (:mod:`eva.batchnorm`). So, in a model with a BatchNorm, Eva holds the input from
the forward hook to the layer's output-gradient hook and reads it there only if it must (in a
model without one, b̄ is never zero by construction and ā is read in the forward hook).

Holding the input from the forward to the backward must not keep memory alive that would
otherwise be freed ("no stored activations"). :func:`held_input` therefore holds it only where
autograd saves that very tensor for the layer's weight gradient: a plain ``nn.Linear`` (2-D or
contiguous input: the matrix product saves it or a view of it) or ``nn.Conv2d`` with numeric
zero padding (no padded copy) whose weight needs a gradient; outside autocast unless the input
already has autocast's dtype (else the layer saves a cast copy); outside ``torch.compile``
tracing; with no saved-tensor hooks active (activation checkpointing, offloading: those replace
what autograd keeps). Everywhere else ā is read in the forward hook as before. The value is the
same either way: autograd guarantees the saved input is unchanged when the layer's backward runs
(it raises otherwise), and :meth:`HeldInput.take` checks the version counter itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from eva.statistics import compiling, zero_padded


class HeldInput:
    """A layer's input from one forward call, until its output-gradient hook takes it."""

    __slots__ = ("x", "version")

    def __init__(self, x: Tensor) -> None:
        self.x: Tensor | None = x
        self.version = x._version

    def take(self) -> Tensor | None:
        """The input, once (later calls, as with ``retain_graph``, give ``None``); ``None`` also
        if it was modified in place since the forward (autograd then raises for the layer)."""
        x, self.x = self.x, None
        if x is None or x._version != self.version:
            return None
        return x


def _saved_tensor_hooks_active() -> bool:
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top is None or top(False) is not None


def saved_by_autograd(module: nn.Module, x: Tensor) -> bool:
    """Whether autograd keeps ``x`` itself (or a view of it) for ``module``'s weight gradient,
    so that holding it until the backward costs no memory."""
    if not module.weight.requires_grad or compiling() or _saved_tensor_hooks_active():  # type: ignore[union-attr]
        return False
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.dtype != torch.get_autocast_dtype(device):
        return False  # the layer saves a cast copy
    kind = type(module)
    if kind.forward is nn.Conv2d.forward and isinstance(module, nn.Conv2d):
        return zero_padded(module)
    if kind.forward is nn.Linear.forward:
        return x.dim() == 2 or x.is_contiguous()
    return False


def held_input(module: nn.Module, x: Tensor) -> HeldInput | None:
    """A :class:`HeldInput` for ``x`` where :func:`saved_by_autograd`, else ``None``."""
    return HeldInput(x.detach()) if saved_by_autograd(module, x) else None

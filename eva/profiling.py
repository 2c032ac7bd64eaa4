"""Named ``torch.profiler`` ranges of a preconditioner step and its hooks.

Under ``torch.profiler.profile`` each part of :meth:`~eva.preconditioner.Preconditioner.step`
and of the statistics hooks (:mod:`eva.capture`) shows as a ``record_function`` range with one of
the names below (the benchmark's phase profile reads them). Without an active profiler, or
while ``torch.compile`` traces, no range is entered: a range costs microseconds, a check does not.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch.profiler import record_function

STEP = "eva.step"
"""The whole :meth:`~eva.preconditioner.Preconditioner.step`."""
REDUCE_STATISTICS = "eva.reduce_statistics"
"""This step's hook statistics averaged over micro-batches and workers."""
GRADIENT_STATISTICS = "eva.gradient_statistics"
"""Statistics read from the gradients themselves (Eva-s, Shampoo, M-FAC)."""
UPDATE_STATE = "eva.update_state"
"""Running averages (Eq. 14–15) and the algorithm's refresh (inverses, roots)."""
GATHER_GRADIENTS = "eva.gather_gradients"
"""The gradients the algorithm acts on (``G`` with its bias column, or weight tensors)."""
PRECONDITION = "eva.precondition"
"""The algorithm's equation (the in-place rank-one step of :mod:`eva.rank_one` as a whole)."""
SCALING = "eva.scaling"
"""Step-size control over all layers (:mod:`eva.scaling`)."""
WRITE_BACK = "eva.write_back"
"""The preconditioned gradients written into ``.grad``."""
FORWARD_HOOKS = "eva.forward_hooks"
"""A layer's forward hook (input statistics)."""
BACKWARD_HOOKS = "eva.backward_hooks"
"""A layer's output-gradient hook (gradient statistics, overlapped communication)."""

RANGES: tuple[str, ...] = (
    STEP,
    REDUCE_STATISTICS,
    GRADIENT_STATISTICS,
    UPDATE_STATE,
    GATHER_GRADIENTS,
    PRECONDITION,
    SCALING,
    WRITE_BACK,
    FORWARD_HOOKS,
    BACKWARD_HOOKS,
)
"""Every range name, step first."""

_OFF = nullcontext()


def profile_range(name: str) -> AbstractContextManager[object]:
    """``record_function(name)`` while a profiler records (outside ``torch.compile``), else a
    context that does nothing."""
    if torch.compiler.is_compiling() or not torch.autograd._profiler_enabled():
        return _OFF
    return record_function(name)

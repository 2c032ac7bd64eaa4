"""Communication: the bytes of curvature statistics a preconditioner all-reduces per step."""

from __future__ import annotations

from typing import Any

from torch import Tensor

import eva


class CountingReducer:
    """A reducer that averages nothing (one worker) but records what would be all-reduced.

    Satisfies :class:`eva.comm.Reducer`: ``world_size`` is 1, so no statistic is rescaled.
    """

    world_size = 1

    def __init__(self) -> None:
        self.calls = 0
        self.bytes = 0
        self.call_bytes: list[int] = []

    def average(self, tensors: list[Tensor]) -> None:
        """Record ``sum(t.nbytes)`` of this call."""
        n = sum(t.nbytes for t in tensors)
        self.calls += 1
        self.bytes += n
        self.call_bytes.append(n)


def communication(
    preconditioner: eva.Preconditioner | None, reducer: CountingReducer | None, grad_bytes: int
) -> dict[str, Any] | None:
    """Statistics bytes all-reduced per step, against the bytes of all trainable gradients.

    Steady state: bytes per refresh (per reducer call) / update interval. The measured average
    over the steps taken (warm-up included) is recorded too.

    Returns:
        None when nothing was counted (a contender built without a :class:`CountingReducer`);
        all zeros for a first-order optimizer.
    """
    if preconditioner is None:
        return {"calls": 0, "bytes_per_refresh": 0, "per_step": 0.0, "ratio": 0.0, "steps": None}
    if reducer is None:
        return None
    per_refresh = reducer.bytes / reducer.calls if reducer.calls else 0.0
    per_step = per_refresh / preconditioner.update_interval
    return {
        "calls": reducer.calls,
        "steps": preconditioner.steps,
        "bytes_total": reducer.bytes,
        "bytes_per_refresh": per_refresh,
        "update_interval": preconditioner.update_interval,
        "per_step": per_step,
        "per_step_measured": reducer.bytes / preconditioner.steps if preconditioner.steps else 0.0,
        "grad_bytes": grad_bytes,
        "ratio": per_step / grad_bytes,
    }

"""Where a step's time goes: per-phase time from ``torch.profiler`` ranges.

The benchmark's step opens the ranges ``forward``, ``backward`` and ``optimizer.step``
(:meth:`.contenders.Contender.step`) inside ``bench.step``; ``Preconditioner.step`` and its hooks
open the ``eva.*`` ranges of :data:`PHASES`. Steps run under ``torch.profiler.profile`` and each
phase's time is its range's total in ``key_averages()`` divided by the steps: CPU time, and on
CUDA the device time as well. Nothing is patched: the library runs its own code paths.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harness.records import atomic_write_text
from scripts.bench.contenders import Contender, build_contender
from scripts.bench.workloads import Workload

PHASES: tuple[tuple[str, int], ...] = (
    ("bench.step", 0),
    ("forward", 1),
    ("eva.forward_hooks", 2),
    ("backward", 1),
    ("eva.backward_hooks", 2),
    ("eva.step", 1),
    ("eva.reduce_statistics", 2),
    ("eva.gradient_statistics", 2),
    ("eva.update_state", 2),
    ("eva.gather_gradients", 2),
    ("eva.precondition", 2),
    ("eva.scaling", 2),
    ("eva.write_back", 2),
    ("optimizer.step", 1),
)
"""The profiled ranges in report order, with their nesting (a range at depth d+1 runs inside the
range above it at depth d). ``eva.step`` is the whole ``Preconditioner.step``."""

_EVA_STEP = [name for name, _ in PHASES].index("eva.step")
STEP_PARTS: tuple[str, ...] = tuple(name for name, depth in PHASES[_EVA_STEP + 1 :] if depth == 2)
"""The named parts of ``eva.step``: the ranges nested right under it in :data:`PHASES`."""

OTHER = "other"
"""The row for the part of ``eva.step`` outside its named sub-ranges."""


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def phase_times(
    step: Callable[[], None], steps: int, device: torch.device
) -> tuple[dict[str, float], dict[str, float] | None, torch.profiler.profile]:
    """Run ``step`` ``steps`` times under ``torch.profiler`` and read back the ranges of
    :data:`PHASES` (ranges that never opened are absent).

    Returns:
        ``(cpu_ms, device_ms, profiler)``: milliseconds per step by range name (CPU time; on
        CUDA also the device time, else None) and the profiler, for its tables.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    names = {name for name, _ in PHASES}
    cpu_ms: dict[str, float] = {}
    device_ms: dict[str, float] | None = {} if device.type == "cuda" else None
    for event in prof.key_averages():
        if event.key not in names:
            continue
        cpu_ms[event.key] = event.cpu_time_total / 1e3 / steps
        if device_ms is not None:
            device_ms[event.key] = event.device_time_total / 1e3 / steps
    for times in (cpu_ms, device_ms):
        if times is not None and "eva.step" in times:
            parts = sum(times.get(name, 0.0) for name in STEP_PARTS)
            times[OTHER] = times["eva.step"] - parts
    return cpu_ms, device_ms, prof


def profiled_step(
    c: Contender, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> None:
    """One benchmark step inside the ``bench.step`` range."""
    with torch.profiler.record_function("bench.step"):
        c.step(x, y, loss_fn)


def _stepper(
    c: Contender, batches: list[tuple[Tensor, Tensor]], loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> Callable[[], None]:
    """A step function that takes the next batch of ``batches`` (cycling) at every call."""
    count = iter(range(1 << 62))

    def step() -> None:
        x, y = batches[next(count) % len(batches)]
        profiled_step(c, x, y, loss_fn)

    return step


def profile_phases(
    work: Workload,
    initial: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    label: str,
    *,
    device: torch.device,
    warmup: int,
    steps: int,
    mfac_grads: int,
    table_path: Path | None = None,
) -> dict[str, Any]:
    """Phase times of ``label`` and of SGD on ``work``, each profiled over ``steps`` steps after
    ``warmup`` steps (the two stepped alternately), both from copies of ``initial``.

    Args:
        table_path: Where to write the ``torch.profiler`` table of ``label``'s steps (None: not).

    Returns:
        ``phases`` (rows ``[name, depth]``), ``sgd_ms`` and ``algo_ms`` (CPU ms per step by
        phase), ``sgd_device_ms``/``algo_device_ms`` on CUDA, and the table's file name.
    """
    sgd = build_contender("sgd", copy.deepcopy(initial).to(device), mfac_grads)
    algo = build_contender(label, copy.deepcopy(initial).to(device), mfac_grads)
    for r in range(warmup):
        x, y = batches[r % len(batches)]
        for c in (sgd, algo) if r % 2 == 0 else (algo, sgd):
            profiled_step(c, x, y, work.loss)
    result: dict[str, Any] = {"batch": work.batch, "steps": steps, "torch_profile": None}
    rows = [[name, depth] for name, depth in PHASES]
    rows.insert(_EVA_STEP + 1 + len(STEP_PARTS), [OTHER, 2])
    result["phases"] = rows
    for key, c in (("sgd", sgd), ("algo", algo)):
        step = _stepper(c, batches[warmup:] + batches[:warmup], work.loss)
        cpu_ms, device_ms, prof = phase_times(step, steps, device)
        result[f"{key}_ms"] = cpu_ms
        if device_ms is not None:
            result[f"{key}_device_ms"] = device_ms
        if key == "algo" and table_path is not None:
            sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            table = prof.key_averages().table(sort_by=sort, row_limit=40)
            header = f"{label} on {work.model}, batch {work.batch}: {steps} steps\n"
            atomic_write_text(table_path, header + table)
            result["torch_profile"] = table_path.name
    return result

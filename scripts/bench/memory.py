"""Memory: the bytes an algorithm keeps between steps, and its peak running alone.

On CUDA the peak is ``max_memory_allocated``; on the CPU it is the rise of the resident-set
high-water mark of a fresh, warmed-up subprocess (``python -m scripts.bench _peak-memory``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eva.layers import find_layers
from scripts.bench.contenders import Contender, build_contender
from scripts.bench.workloads import Workload, workload

REPO_ROOT = Path(__file__).resolve().parents[2]


def tensor_bytes(obj: Any, seen: set[tuple[str, int]] | None = None) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj`` (dicts, lists, tuples).

    A storage shared by several tensors (views) counts once, in full: that is what it keeps alive.
    """
    seen = set() if seen is None else seen
    if isinstance(obj, Tensor):
        storage = obj.untyped_storage()
        key = (str(obj.device), storage.data_ptr())
        if key in seen or storage.nbytes() == 0:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v, seen) for v in obj)
    return 0


def state_bytes(c: Contender) -> dict[str, int]:
    """Bytes kept between steps: parameters, gradients, optimizer and preconditioner state."""
    params = list(c.model.parameters())
    pre = c.preconditioner
    out = {
        "params": sum(p.numel() * p.element_size() for p in params),
        "grads": sum(p.numel() * p.element_size() for p in params if p.requires_grad),
        "optimizer": tensor_bytes(c.optimizer.state_dict()["state"]),
        "preconditioner": 0 if pre is None else tensor_bytes(pre.state_dict()),
    }
    out["total"] = sum(out.values())
    return out


def mfac_buffer_bytes(model: nn.Module, mfac_grads: int) -> int:
    """Bytes of M-FAC's gradient windows: ``num_grads`` copies of the preconditioned gradients."""
    per_copy = sum(
        sum(p.numel() * p.element_size() for p in layer.parameters())
        for layer in find_layers(model)
    )
    return mfac_grads * per_copy


def memory_budget(device: torch.device) -> int:
    """Total memory of the device (CUDA) or the machine (CPU), in bytes."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _proc_status_bytes(field_name: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field_name}")


def _reset_peak_rss() -> None:
    """Reset the process's resident-set high-water mark (Linux >= 4.0: ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def _run_child(args: list[str]) -> dict[str, Any]:
    """Run ``python -m scripts.bench _peak-memory ARGS`` and read its ``PEAK`` line."""
    cmd = [sys.executable, "-m", "scripts.bench", "_peak-memory", *args]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("PEAK "):
            return json.loads(line[5:])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return {"bytes": None, "method": "rss", "error": f"exit {proc.returncode}: {tail}"}


def peak_memory_rss_experiment(experiment: str, setting: str, steps: int) -> dict[str, Any]:
    """:func:`peak_memory_rss` for a setting of an experiment preset (``--experiment``), on the
    first training batch of the preset's data.

    The child builds the run twice before it resets the high-water mark (the first run takes the
    throwaway step; the data of both is loaded and the second run's is freed then), so the
    measured steps see no data loading; the second run's parameters, resident at the reset, are
    added back: the same quantity as for a model (``bytes`` = the rise over the resident memory
    before the model was built)."""
    return _run_child(
        [
            "--experiment", experiment, "--setting", setting, "--steps", str(steps),
            "--threads", str(torch.get_num_threads()),
        ]
    )  # fmt: skip


def peak_memory_rss(
    work: Workload, label: str, seed: int, steps: int, mfac_grads: int
) -> dict[str, Any]:
    """Peak resident memory of ``steps`` steps of ``label`` alone, in a fresh process.

    The child first runs one step of the algorithm on a throwaway copy (so that code pages and
    library buffers are resident), frees it, resets the resident-set high-water mark and records
    its resident memory; it then builds the model and algorithm again and runs the steps. The
    result is ``VmHWM − VmRSS before``: parameters, gradients, states, activations, temporaries.
    glibc serves every allocation above 128 KiB with ``mmap`` (``MALLOC_MMAP_THRESHOLD_``), so
    freed tensors leave the resident set and the peak tracks live memory.
    """
    return _run_child(
        [
            "--model", work.model, "--optimizer", label, "--batch", str(work.batch),
            "--seed", str(seed), "--steps", str(steps), "--mfac-grads", str(mfac_grads),
            "--threads", str(torch.get_num_threads()), "--image-size", str(work.input_shape[-1]),
        ]
    )  # fmt: skip


def peak_memory_child(argv: Sequence[str]) -> int:
    """The ``_peak-memory`` subprocess (internal): prints ``PEAK {json}``; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m scripts.bench _peak-memory")
    parser.add_argument("--model")
    parser.add_argument("--optimizer")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--experiment")
    parser.add_argument("--setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--mfac-grads", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.experiment:
        return _peak_experiment(args.experiment, args.setting, args.steps)
    work = workload(args.model, args.batch, args.batch, args.image_size)
    x, y = work.batch_tensors(args.seed, torch.device("cpu"))
    # warm pass: loads every code page and library buffer the algorithm touches, then is freed
    c = build_contender(args.optimizer, work.build(args.seed), args.mfac_grads)
    c.step(x, y, work.loss)
    del c
    gc.collect()
    before = _proc_status_bytes("VmRSS")
    _reset_peak_rss()
    c = build_contender(args.optimizer, work.build(args.seed), args.mfac_grads)
    for _ in range(args.steps):
        c.step(x, y, work.loss)
    peak = _proc_status_bytes("VmHWM")
    result = {"bytes": peak - before, "method": "rss", "rss_before_model": before}
    print("PEAK " + json.dumps(result | {"peak_rss": peak, "steps": args.steps}), flush=True)
    return 0


def _peak_experiment(experiment: str, setting: str, steps: int) -> int:
    """The ``_peak-memory`` child for an experiment setting (:func:`peak_memory_rss_experiment`)."""
    from scripts.bench.workloads import experiment_runs  # imports train.py

    first = experiment_runs(experiment, [setting], 1)
    (x, y), loss = first.batches[0], first.loss
    first.contenders[setting].step(x, y, loss)  # the throwaway step
    c = experiment_runs(experiment, [setting], 1).contenders[setting]
    first.contenders.clear()
    gc.collect()
    params = sum(p.numel() * p.element_size() for p in c.model.parameters())
    before = _proc_status_bytes("VmRSS")
    _reset_peak_rss()
    for _ in range(steps):
        c.step(x, y, loss)
    peak = _proc_status_bytes("VmHWM")
    result = {"bytes": peak - before + params, "method": "rss", "rss_before_model": before - params}
    print("PEAK " + json.dumps(result | {"peak_rss": peak, "steps": steps}), flush=True)
    return 0


def peak_memory_cuda(
    work: Workload,
    label: str,
    initial: nn.Module,
    device: torch.device,
    seed: int,
    steps: int,
    mfac_grads: int,
) -> dict[str, Any]:
    """``max_memory_allocated`` over ``steps`` steps of ``label`` alone (minus the batch)."""
    x, y = work.batch_tensors(seed, device)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    holder: list[Contender] = []  # dropped before the cache is emptied
    try:
        holder.append(build_contender(label, copy.deepcopy(initial).to(device), mfac_grads))
        for _ in range(steps):
            holder[0].step(x, y, work.loss)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        result = {"bytes": peak, "method": "cuda", "steps": steps}
    except RuntimeError as err:
        result = {"bytes": None, "method": "cuda", "error": str(err).splitlines()[0][:200]}
    holder.clear()
    gc.collect()
    torch.cuda.empty_cache()
    return result

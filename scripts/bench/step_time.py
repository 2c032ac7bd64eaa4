"""Step time: every contender stepped in turn on the same batches, timed against SGD.

Every algorithm gets its own deep copy of the same initial weights; all see the same batches
(round r: batch r mod the pool size) and are stepped in turn (round robin, the starting position
rotating every round), so drifting machine load hits all alike. A step is zero_grad + forward +
backward + ``preconditioner.step()`` + ``optimizer.step()``, timed with ``time.perf_counter``
(on CUDA with ``torch.cuda.synchronize`` before and after).
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from eva.layers import find_layers
from scripts.bench.communication import communication
from scripts.bench.contenders import Contender, build_contender, parse_label
from scripts.bench.memory import (
    memory_budget,
    mfac_buffer_bytes,
    peak_memory_cuda,
    peak_memory_rss,
    peak_memory_rss_experiment,
    state_bytes,
)
from scripts.bench.profile import profile_phases, synchronize
from scripts.bench.workloads import ExperimentWorkload, Workload


def log(message: str) -> None:
    """Print a progress line at once."""
    print(message, flush=True)


def paired_ratio(algo_ms: list[float], sgd_ms: list[float]) -> float | None:
    """Median over rounds of (algorithm step / SGD step of the same round).

    Steps of one round run back to back, so slow drifts of machine load cancel in each pair.
    """
    if not algo_ms or len(algo_ms) != len(sgd_ms):
        return None
    return statistics.median(a / s for a, s in zip(algo_ms, sgd_ms))


def time_round_robin(
    contenders: dict[str, Contender],
    batches: list[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    steps: int,
    warmup: int,
    device: torch.device,
    tag: str,
    loads: list[float] | None = None,
) -> dict[str, str]:
    """Step every contender in turn, ``warmup + steps`` rounds; fill ``Contender.times``.

    Round ``r`` gives every contender batch ``r mod len(batches)``; the round's starting
    position rotates so that no algorithm always follows the same one. Python's garbage
    collector runs between rounds, never inside a timed step. The 1-minute load average after
    each round is appended to ``loads``.

    Returns:
        ``{label: error}`` for algorithms whose step raised (they leave the rotation).
    """
    failed: dict[str, str] = {}
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(warmup + steps):
            active = [label for label in contenders if label not in failed]
            k = r % len(active)
            x, y = batches[r % len(batches)]
            line = []
            for label in active[k:] + active[:k]:
                c = contenders[label]
                try:
                    synchronize(device)
                    cpu_start, start = time.process_time(), time.perf_counter()
                    loss = c.step(x, y, loss_fn)
                    synchronize(device)
                    seconds = time.perf_counter() - start
                    cpu_seconds = time.process_time() - cpu_start
                except (RuntimeError, MemoryError) as err:  # e.g. out of memory
                    failed[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                    log(f"[{tag}] {label} failed: {failed[label]}")
                    c.model = c.optimizer = c.preconditioner = None  # type: ignore[assignment]
                    gc.collect()
                    continue
                c.last_loss = loss
                if r >= warmup:
                    c.times.append(seconds)
                    c.cpu_times.append(cpu_seconds)
                line.append(f"{label} {1e3 * seconds:.0f}")
            gc.collect()
            load = os.getloadavg()[0]
            if loads is not None:
                loads.append(load)
            phase = "warm-up" if r < warmup else "timed"
            log(
                f"[{tag}] round {r + 1}/{warmup + steps} ({phase}, load {load:.1f}) ms: "
                + ", ".join(line)
            )
    finally:
        if gc_enabled:
            gc.enable()
    return failed


def summarize_times(seconds: list[float]) -> dict[str, Any]:
    """Median, mean, min, max, standard deviation and all step times, in milliseconds."""
    ms = [1e3 * s for s in seconds]
    return {
        "median": statistics.median(ms),
        "mean": statistics.fmean(ms),
        "min": min(ms),
        "max": max(ms),
        "stdev": statistics.stdev(ms) if len(ms) > 1 else 0.0,
        "all": ms,
    }


def measure(
    contenders: dict[str, Contender],
    batches: list[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    entry: dict[str, Any],
    args: argparse.Namespace,
    device: torch.device,
    tag: str,
    baselines: dict[str, str] | None = None,
) -> None:
    """Time ``contenders`` and fill ``entry``'s ``algorithms``, ``failed`` and ``load_average``;
    each algorithm's ratios to its baseline too (``baselines``: label → baseline label; default:
    ``sgd`` for every algorithm, where there is an ``sgd`` contender)."""
    load_before = os.getloadavg()
    loads: list[float] = []
    failed = time_round_robin(
        contenders, batches, loss_fn, args.steps, args.warmup, device, tag, loads
    )
    entry["load_average"] = {
        "before": list(load_before),
        "after_timing": list(os.getloadavg()),
        "per_round_1min": loads,
    }
    entry["failed"] = failed
    for label, c in contenders.items():
        if label in failed:
            continue
        loss = float(c.last_loss) if c.last_loss is not None else math.nan
        algo = {
            "hparams": c.hparams,
            "time_ms": summarize_times(c.times),
            "cpu_time_ms": summarize_times(c.cpu_times),
            "state_bytes": state_bytes(c),
            "comm": communication(c.preconditioner, c.reducer, entry["grad_bytes"]),
            "final_loss": loss,
        }
        if not math.isfinite(loss):
            algo["note"] = "the loss became non-finite during the benchmark (timing still valid)"
        entry["algorithms"][label] = algo
    algos = entry["algorithms"]
    if baselines is None:
        baselines = dict.fromkeys(algos, "sgd")
    for label, algo in algos.items():
        base = algos.get(baselines.get(label, ""))
        if base is None:
            continue
        if entry.get("experiment"):
            algo["baseline"] = baselines[label]
        algo["time_ratio_median"] = algo["time_ms"]["median"] / base["time_ms"]["median"]
        algo["time_ratio_mean"] = algo["time_ms"]["mean"] / base["time_ms"]["mean"]
        algo["time_ratio_paired"] = paired_ratio(algo["time_ms"]["all"], base["time_ms"]["all"])
        cpu_ms, base_cpu_ms = algo["cpu_time_ms"]["median"], base["cpu_time_ms"]["median"]
        algo["cpu_time_ratio_median"] = cpu_ms / base_cpu_ms
        algo["state_ratio"] = algo["state_bytes"]["total"] / base["state_bytes"]["total"]


def benchmark_model(
    work: Workload, labels: list[str], args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Time, measure and profile every algorithm on one model; returns the model's record."""
    tag = work.model
    initial = work.build(args.seed)
    batches = work.batch_pool(args.seed, device, min(args.batches, args.warmup + args.steps))
    trainable = [p for p in initial.parameters() if p.requires_grad]
    entry: dict[str, Any] = {
        "batch": work.batch,
        "input_shape": list(work.input_shape),
        "num_classes": work.num_classes,
        "params": sum(p.numel() for p in initial.parameters()),
        "grad_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "preconditioned_layers": len(find_layers(initial)),
        "algorithms": {},
        "skipped": {},
    }
    log(
        f"[{tag}] batch {work.batch}, input {work.input_shape}, {entry['params'] / 1e6:.2f} M "
        f"params, {entry['preconditioned_layers']} Linear/Conv2d layers; "
        f"{len(labels)} algorithms × ({args.warmup} warm-up + {args.steps} timed) steps"
    )
    contenders: dict[str, Contender] = {}
    mfac_limit = args.mfac_max_fraction * memory_budget(device)
    for label in labels:
        if parse_label(label)[0] == "mfac":
            need = mfac_buffer_bytes(initial, args.mfac_grads)
            if need > mfac_limit:
                entry["skipped"][label] = (
                    f"M-FAC's {args.mfac_grads} gradient copies need {need / 2**30:.1f} GiB, over "
                    f"--mfac-max-fraction {args.mfac_max_fraction} of {device.type} memory"
                )
                log(f"[{tag}] skip {label}: {entry['skipped'][label]}")
                continue
        try:
            model = copy.deepcopy(initial).to(device)
            contenders[label] = build_contender(label, model, args.mfac_grads)
        except (ValueError, RuntimeError, MemoryError) as err:
            entry["skipped"][label] = f"could not be built: {err}"
            log(f"[{tag}] skip {label}: {entry['skipped'][label]}")
    measure(contenders, batches, work.loss, entry, args, device, tag)
    if "sgd" in entry["failed"]:
        raise RuntimeError(f"[{tag}] the SGD baseline failed: {entry['failed']['sgd']}")
    del contenders
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if tag in args.profile_models:
        entry["profile"] = {}
        for label in args.profile_optimizers:
            if label in entry["algorithms"]:
                log(f"[{tag}] profile {label} against sgd, {args.profile_steps} steps each")
                path = args.out / f"{args.name}-{work.model}-{label}-torchprofile.txt"
                entry["profile"][label] = profile_phases(
                    work, initial, batches, label, device=device, warmup=args.warmup,
                    steps=args.profile_steps, mfac_grads=args.mfac_grads,
                    table_path=path if args.torch_profiler else None,
                )  # fmt: skip

    if args.peak_memory != "none":
        for label, algo in entry["algorithms"].items():
            log(f"[{tag}] peak memory of {label} alone ({args.peak_memory})")
            if args.peak_memory == "cuda":
                algo["peak_memory"] = peak_memory_cuda(
                    work, label, initial, device, args.seed, args.peak_steps, args.mfac_grads
                )
            else:
                algo["peak_memory"] = peak_memory_rss(
                    work, label, args.seed, args.peak_steps, args.mfac_grads
                )
        base = entry["algorithms"]["sgd"]["peak_memory"].get("bytes")
        for algo in entry["algorithms"].values():
            peak = algo["peak_memory"]
            if peak.get("bytes") is not None and base:
                peak["ratio"] = peak["bytes"] / base
    return entry


def experiment_baselines(work: ExperimentWorkload) -> dict[str, str]:
    """Each setting's baseline: the first first-order setting (no preconditioner) with the same
    base optimizer (``optimizer.base._target_``), e.g. ``optimizer=adamw`` for
    ``optimizer=eva_adamw``; a first-order setting is its own. Settings without one are left out."""
    targets = {
        label: (c.hparams["optimizer"]["base"]["_target_"], c.preconditioner is None)
        for label, c in work.contenders.items()
    }
    firsts: dict[str, str] = {}
    for label, (target, first_order) in targets.items():
        if first_order:
            firsts.setdefault(target, label)
    return {label: firsts[t] for label, (t, _) in targets.items() if t in firsts}


def benchmark_experiment(work: ExperimentWorkload, args: argparse.Namespace) -> dict[str, Any]:
    """Time every setting of an experiment preset on its own first batches, each against its
    baseline (:func:`experiment_baselines`), and with ``--peak-memory rss`` the peak memory of
    each alone (no profile; communication is not counted: the settings are built with the run's
    reducer)."""
    first = next(iter(work.contenders.values()))
    trainable = [p for p in first.model.parameters() if p.requires_grad]
    entry: dict[str, Any] = {
        "experiment": args.experiment,
        "batch": int(work.batches[0][0].shape[0]),
        "input_shape": list(work.batches[0][0].shape[1:]),
        "params": sum(p.numel() for p in first.model.parameters()),
        "grad_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "algorithms": {},
        "skipped": {},
    }
    n = len(work.contenders)
    log(f"[{work.model}] {args.experiment}: {n} settings, batch {entry['batch']}")
    baselines = experiment_baselines(work)
    measure(
        work.contenders, work.batches, work.loss, entry, args, work.device, work.model, baselines
    )
    if args.peak_memory == "rss":
        algos = entry["algorithms"]
        for label, algo in algos.items():
            log(f"[{work.model}] peak memory of {label} alone (rss)")
            algo["peak_memory"] = peak_memory_rss_experiment(
                args.experiment, label, args.peak_steps
            )
        for label, algo in algos.items():
            base = algos.get(baselines.get(label, ""), {}).get("peak_memory", {}).get("bytes")
            if algo["peak_memory"].get("bytes") is not None and base:
                algo["peak_memory"]["ratio"] = algo["peak_memory"]["bytes"] / base
    return entry

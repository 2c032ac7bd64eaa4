"""The markdown of a step-time record (Table 5 / Table 10 style).

``python -m scripts.bench report results/bench/steptime-cpu.json`` rewrites the ``.md`` next to
the JSON file (the benchmark does this itself; this re-renders without re-running). Records
written before the phase profile moved to ``torch.profiler`` ranges render as they were.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.records import atomic_write_text
from scripts.bench.step_time import paired_ratio

PAPER_TIME_MEM: dict[str, dict[str, tuple[float, float]]] = {
    # model: {algorithm label: (time ×SGD, memory ×SGD)} from Table 5 (Shampoo, K-FAC, Eva; the
    # values in parentheses there are interval 10 on CIFAR-10 and 50 on ImageNet; Table 5 gives one
    # memory figure per algorithm) and Table 10 (Eva-f, Eva-s). RTX 2080Ti GPU.
    "vgg19": {
        "shampoo@1": (19.6, 1.01), "shampoo@10": (2.89, 1.01), "kfac@1": (5.57, 1.01),
        "kfac@10": (1.68, 1.01), "eva": (1.13, 1.00), "eva_f": (1.10, 1.00),
        "eva_s": (1.13, 1.00),
    },
    "resnet110": {
        "shampoo@1": (6.79, 1.00), "shampoo@10": (1.90, 1.00), "kfac@1": (1.64, 1.03),
        "kfac@10": (1.16, 1.03), "eva": (1.16, 1.00), "eva_f": (1.11, 1.00),
        "eva_s": (1.35, 1.00),
    },
    "wrn28_10": {
        "shampoo@1": (6.69, 1.05), "shampoo@10": (1.60, 1.05), "kfac@1": (2.68, 1.38),
        "kfac@10": (1.25, 1.38), "eva": (1.03, 1.00), "eva_f": (1.02, 1.00),
        "eva_s": (1.04, 1.00),
    },
    "resnet50": {
        "shampoo@1": (30.7, 1.07), "shampoo@50": (1.71, 1.07), "kfac@1": (2.52, 1.06),
        "kfac@50": (1.14, 1.06), "eva": (1.09, 1.00), "eva_f": (1.12, 1.00),
        "eva_s": (1.26, 1.00),
    },
    "inception_v4": {
        "shampoo@1": (75.3, 1.11), "shampoo@50": (2.70, 1.11), "kfac@1": (3.95, 1.42),
        "kfac@50": (1.28, 1.42), "eva": (1.28, 1.00), "eva_f": (1.43, 1.00),
        "eva_s": (2.00, 1.00),
    },
    "vit_b16": {
        "shampoo@1": (199.0, 1.31), "shampoo@50": (6.20, 1.31), "kfac@1": (4.47, 1.45),
        "kfac@50": (1.43, 1.45), "eva": (1.18, 1.00), "eva_f": (1.20, 1.00),
        "eva_s": (1.32, 1.00),
    },
}  # fmt: skip
"""The paper's relative iteration time and memory (Tables 5 and 10), printed beside ours."""


def _ratio(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}×"


def _mib(n: float | None) -> str:
    return "—" if n is None else f"{n / 2**20:,.1f}"


def _paper(model: str, label: str) -> tuple[str, str]:
    entry = PAPER_TIME_MEM.get(model, {}).get(label)
    return ("—", "—") if entry is None else (f"{entry[0]:g}×", f"{entry[1]:.2f}×")


def render_step_time(record: dict[str, Any]) -> str:
    """Markdown for a ``step-time`` record: one table per model, then the phase profiles."""
    machine, config = record["machine"], record["config"]
    peak_kind = config.get("peak_memory")
    lines = [
        "# Step time, memory and communication relative to SGD",
        "",
        f"Command: `{record['command']}`  ",
        f"Date: {record['date']}  ",
        f"Device: {machine['device_name']} ({machine['device']}); CPU {machine['cpu']}, "
        f"{machine['cpu_count']} cores, torch {machine['torch']} with {machine['torch_threads']} "
        f"threads; commit {machine.get('git_commit') or 'unknown'}",
        "",
        f"- **time ×SGD**: median step time over {config['steps']} timed steps after "
        f"{config['warmup']} warm-up steps, divided by SGD's; all algorithms run in one process "
        "on copies of the same initial weights, one step each in turn "
        f"(round robin, starting position rotating every round; round r uses batch r mod "
        f"{config.get('batches', 1)} of a pool of random batches, the same for every algorithm). "
        "A step is zero_grad + forward + "
        "backward + preconditioner.step() + optimizer.step(). The **mean** column includes the "
        "refresh steps of interval methods (K-FAC@10 refreshes 1 step in 10), which the median "
        "hides. **paired**: the median over rounds of (step / SGD's step in the same round), "
        "which cancels slow drifts of machine load.",
        "- **state mem ×SGD**: bytes kept between steps — parameters + gradients + optimizer state "
        "+ preconditioner state (`state_dict()` tensors) — divided by SGD's (params + grads + "
        "momentum). Activations are not included.",
    ]
    if peak_kind == "rss":
        lines.append(
            "- **peak mem ×SGD**: a fresh process runs one throwaway step of the algorithm (to "
            "load code and library buffers), frees it, resets its resident-set high-water mark, "
            f"then runs {config['peak_steps']} steps of that algorithm alone; the rise of the "
            "high-water mark over the resident memory before the model was built (parameters, "
            "gradients, states, activations, temporaries), divided by SGD's. The CPU analogue "
            "of the paper's GPU memory."
        )
    elif peak_kind == "cuda":
        lines.append(
            "- **peak mem ×SGD**: `torch.cuda.max_memory_allocated` over "
            f"{config['peak_steps']} steps of that algorithm alone (nothing else on the device but "
            "the batch), divided by SGD's — the measure of the paper's Table 5."
        )
    lines += [
        "- **comm ×grad**: bytes of curvature statistics all-reduced per step (steady state: "
        "bytes per refresh / update interval), divided by the bytes of all trainable gradients. "
        "Gradient-based methods (Shampoo, Eva-s, M-FAC) and first-order optimizers reduce "
        "nothing beyond the gradients: 0.",
        "- **paper**: Tables 5 and 10 of the paper (RTX 2080Ti GPU, their batch sizes).",
    ]
    if any(entry.get("experiment") for entry in record["models"].values()):
        lines.append(
            "- **×base** (experiment presets): the same ratios, each setting divided by its "
            "**baseline** (the first first-order setting with the same base optimizer, e.g. "
            "AdamW for Eva on AdamW) instead of SGD."
        )
    lines += [
        "",
    ]
    for model, entry in record["models"].items():
        lines += _model_table(model, entry, peak_kind, machine)
    for model, entry in record["models"].items():
        for label, prof in entry.get("profile", {}).items():
            lines += render_profile(model, label, prof, cuda=machine["device"] != "cpu")
    return "\n".join(lines).rstrip() + "\n"


def _cores(machine: dict[str, Any]) -> str:
    return str(machine.get("cpu_count") or "?")


def _model_table(
    model: str, entry: dict[str, Any], peak_kind: str | None, machine: dict[str, Any]
) -> list[str]:
    algos = entry["algorithms"]
    sgd = algos.get("sgd", {}).get("time_ms", {})
    shape = "×".join(str(s) for s in entry["input_shape"])
    preset = f" (experiment={entry['experiment']})" if entry.get("experiment") else ""
    head = (
        f"## {model}{preset} — batch {entry['batch']}, input {shape}, "
        f"{entry['params'] / 1e6:.2f} M parameters"
    )
    lines = [head, ""]
    if sgd:
        load = entry.get("load_average")
        load_text = ""
        if load:
            rounds = load.get("per_round_1min")
            during = (
                f"at most {max(rounds):.1f} after any round"
                if rounds
                else f"{load['after_timing'][0]:.1f} after timing"
            )
            load_text = (
                f" Machine load (1-min average; {_cores(machine)} cores, this benchmark's "
                f"{machine['torch_threads']} threads count about {machine['torch_threads']}): "
                f"{load['before'][0]:.1f} before timing, {during}."
            )
        lines.append(
            f"SGD: median **{sgd['median']:.1f} ms**/step (mean {sgd['mean']:.1f} ms, "
            f"min {sgd['min']:.1f}, max {sgd['max']:.1f}); gradient bytes "
            f"{_mib(entry['grad_bytes'])} MiB.{load_text}"
        )
        lines.append("")
    # an experiment's settings are compared with their own baselines (``baseline``), not SGD
    versus = "×base" if entry.get("experiment") else "×SGD"
    peak_col = peak_kind is not None or any(a.get("peak_memory") for a in algos.values())
    header = ["optimizer", f"time {versus} (median)", f"time {versus} (mean)", "paired"]
    header += ["median ms", f"state mem {versus}", "state MiB"]
    if peak_col:
        header += [f"peak mem {versus}", "peak MiB"]
    header += ["comm ×grad", "paper time", "paper mem"]
    if entry.get("experiment"):
        header = [*header[:-2], "baseline"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for label, algo in algos.items():
        if algo.get("error"):
            lines.append(f"| {label} | failed: {algo['error']} |" + " |" * (len(header) - 2))
            continue
        t = algo["time_ms"]
        state = algo.get("state_bytes") or {}
        paired = algo.get("time_ratio_paired")
        if paired is None and sgd:
            paired = paired_ratio(t["all"], sgd["all"])
        row = [
            f"**{label}**" if label.startswith("eva") else label,
            _ratio(algo.get("time_ratio_median")),
            _ratio(algo.get("time_ratio_mean")),
            _ratio(paired),
            f"{t['median']:.1f}",
            _ratio(algo.get("state_ratio")),
            _mib(state.get("total")),
        ]
        if peak_col:
            peak = algo.get("peak_memory") or {}
            if peak.get("error"):
                row += ["failed", "—"]
            else:
                row += [_ratio(peak.get("ratio")), _mib(peak.get("bytes"))]
        comm = algo.get("comm")
        ratio = "—" if comm is None else f"{comm['ratio']:.2e}" if comm["ratio"] else "0"
        row += (
            [ratio, algo.get("baseline", "—")]
            if entry.get("experiment")
            else [ratio, *_paper(model, label)]
        )
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    notes = [f"- {label}: {algo['note']}" for label, algo in algos.items() if algo.get("note")]
    notes += [f"- {label}: skipped — {why}" for label, why in entry.get("skipped", {}).items()]
    notes += [f"- {label}: failed — {why}" for label, why in entry.get("failed", {}).items()]
    if notes:
        lines += ["Notes:", *notes, ""]
    return lines


def render_profile(model: str, label: str, prof: dict[str, Any], cuda: bool = False) -> list[str]:
    """Markdown for one phase profile (``label`` against SGD on ``model``).

    The first row of ``prof["phases"]`` is the whole step; a record from ``torch.profiler``
    ranges (``bench.step``) may add device times (CUDA).
    """
    sgd, algo = prof["sgd_ms"], prof["algo_ms"]
    total = prof["phases"][0][0]
    profiler = total == "bench.step"
    columns = [("sgd ms", sgd), (f"{label} ms", algo)]
    if prof.get("algo_device_ms") is not None:
        columns += [
            ("sgd GPU ms", prof["sgd_device_ms"]),
            (f"{label} GPU ms", prof["algo_device_ms"]),
        ]
    how = "ms per step and phase from torch.profiler ranges" if profiler else "median ms per step"
    lines = [
        f"## Where {label}'s time goes — {model}, batch {prof['batch']} "
        f"({prof['steps']} steps, {how})",
        "",
        "| phase | " + " | ".join(name for name, _ in columns) + f" | Δ ms | share of {label}'s "
        "overhead |",
        "|---|" + "---:|" * (len(columns) + 2),
    ]
    overhead = algo[total] - sgd[total]

    def cell(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    for phase, indent in prof["phases"]:
        s, a = sgd.get(phase), algo.get(phase)
        if s is None and a is None:
            continue
        delta = None if a is None else a - (s or 0.0)
        share = "—"
        if delta is not None and phase != total and overhead > 0:
            share = f"{100 * delta / overhead:.0f}%"
        name = ("&nbsp;&nbsp;&nbsp;&nbsp;" * indent) + phase
        cells = [cell(times.get(phase)) for _, times in columns]
        delta_text = "—" if delta is None else f"{delta:+.2f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {delta_text} | {share} |")
    lines += [
        "",
        f"Overhead over SGD: {overhead:+.2f} ms per step ({100 * overhead / sgd[total]:+.1f}%). "
        "Indented rows are parts of the row above.",
        "",
    ]
    if profiler:
        lines += [
            "Times are the profiler's totals of each range divided by the steps (CPU time: the "
            "host's time inside the range; on CUDA, GPU ms is the device time of the range's "
            "kernels). The profiler itself costs a little: these totals exceed the step times "
            "of the table above.",
            "",
        ]
    elif cuda:
        lines += [
            "On CUDA every timer synchronises the device, so the CPU no longer runs ahead of the "
            "GPU: each phase shows its launch work plus its own kernels, serialised, and the "
            "total exceeds the unprofiled step time of the table above.",
            "",
        ]
    if prof.get("torch_profile"):
        lines += [f"torch.profiler table of {label}'s steps: `{prof['torch_profile']}`", ""]
    return lines


def render(record: dict[str, Any]) -> str:
    """Markdown for a ``step-time`` record.

    Raises:
        ValueError: a record of another kind.
    """
    if record.get("kind") != "step-time":
        raise ValueError(f"not a step-time record (kind {record.get('kind')!r})")
    return render_step_time(record)


def rerender(paths: Sequence[Path]) -> int:
    """Rewrite the ``.md`` beside each JSON record; returns the exit status (2: a bad record)."""
    for path in paths:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            text = render(record)
        except (OSError, ValueError, KeyError) as err:
            print(f"python -m scripts.bench report: error: {path}: {err}", file=sys.stderr)
            return 2
        atomic_write_text(path.with_suffix(".md"), text)
        print(f"wrote {path.with_suffix('.md')}")
    return 0

"""Render the benchmark's JSON records (``scripts/bench.py``) as markdown.

``python scripts/bench_report.py results/bench/steptime-cpu.json`` rewrites the ``.md`` next to the
JSON file (the benchmark does this itself; this is for re-rendering without re-running). Works for
both record kinds: ``step-time`` (Table 5 / Table 10 style) and ``time-to-target`` (Fig. 5 style).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def paired_ratio(algo_ms: list[float], sgd_ms: list[float]) -> float | None:
    """Median over rounds of (algorithm step / SGD step of the same round).

    Steps of one round run back to back, so slow drifts of machine load cancel in each pair.
    """
    if not algo_ms or len(algo_ms) != len(sgd_ms):
        return None
    return statistics.median(a / s for a, s in zip(algo_ms, sgd_ms))


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
    head = (
        f"## {model} — batch {entry['batch']}, input {shape}, "
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
    peak_col = peak_kind is not None
    header = ["optimizer", "time ×SGD (median)", "time ×SGD (mean)", "paired", "median ms"]
    header += ["state mem ×SGD", "state MiB"]
    if peak_col:
        header += ["peak mem ×SGD", "peak MiB"]
    header += ["comm ×grad", "paper time", "paper mem"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for label, algo in algos.items():
        if algo.get("error"):
            lines.append(f"| {label} | failed: {algo['error']} |" + " |" * (len(header) - 2))
            continue
        t = algo["time_ms"]
        state = algo["state_bytes"]
        paired = algo.get("time_ratio_paired")
        if paired is None and sgd:
            paired = paired_ratio(t["all"], sgd["all"])
        row = [
            f"**{label}**" if label.startswith("eva") else label,
            _ratio(algo["time_ratio_median"]),
            _ratio(algo["time_ratio_mean"]),
            _ratio(paired),
            f"{t['median']:.1f}",
            _ratio(algo["state_ratio"]),
            _mib(state["total"]),
        ]
        if peak_col:
            peak = algo.get("peak_memory") or {}
            if peak.get("error"):
                row += ["failed", "—"]
            else:
                row += [_ratio(peak.get("ratio")), _mib(peak.get("bytes"))]
        comm = algo["comm"]
        row += [f"{comm['ratio']:.2e}" if comm["ratio"] else "0", *_paper(model, label)]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    notes = [f"- {label}: {algo['note']}" for label, algo in algos.items() if algo.get("note")]
    notes += [f"- {label}: skipped — {why}" for label, why in entry.get("skipped", {}).items()]
    if notes:
        lines += ["Notes:", *notes, ""]
    return lines


def render_profile(model: str, label: str, prof: dict[str, Any], cuda: bool = False) -> list[str]:
    """Markdown for one phase profile (``label`` against SGD on ``model``)."""
    sgd, algo = prof["sgd_ms"], prof["algo_ms"]
    lines = [
        f"## Where {label}'s time goes — {model}, batch {prof['batch']} "
        f"({prof['steps']} steps, median ms per step and phase)",
        "",
        f"| phase | sgd ms | {label} ms | Δ ms | share of {label}'s overhead |",
        "|---|---:|---:|---:|---:|",
    ]
    overhead = algo["total"] - sgd["total"]

    def share(delta: float) -> str:
        return f"{100 * delta / overhead:.0f}%" if overhead > 0 else "—"

    for phase, indent in prof["phases"]:
        s, a = sgd.get(phase), algo.get(phase)
        delta = None if a is None else a - (s or 0.0)
        name = ("&nbsp;&nbsp;&nbsp;&nbsp;" * indent) + phase
        lines.append(
            f"| {name} | {'—' if s is None else f'{s:.2f}'} | {'—' if a is None else f'{a:.2f}'}"
            f" | {'—' if delta is None else f'{delta:+.2f}'} | "
            f"{'—' if delta is None or phase == 'total' else share(delta)} |"
        )
    lines += [
        "",
        f"Overhead over SGD: {overhead:+.2f} ms per step ({100 * overhead / sgd['total']:+.1f}%). "
        "Indented rows are parts of the row above; per-phase medians need not add up exactly. "
        "The timers themselves cost a little (they are off in the step-time table).",
        "",
    ]
    if cuda:
        lines += [
            "On CUDA every timer synchronises the device, so the CPU no longer runs ahead of the "
            "GPU: each phase shows its launch work plus its own kernels, serialised, and the "
            "total exceeds the unprofiled step time of the table above. The torch.profiler "
            "table gives each kernel's GPU time.",
            "",
        ]
    if prof.get("torch_profile"):
        lines += [f"torch.profiler table of two {label} steps: `{prof['torch_profile']}`", ""]
    return lines


def render_time_to_target(record: dict[str, Any]) -> str:
    """Markdown for a ``time-to-target`` record (paper Fig. 5 style)."""
    machine, config = record["machine"], record["config"]
    lines = [
        f"# Time to target — {record['task']['description']}",
        "",
        f"Command: `{record['command']}`  ",
        f"Date: {record['date']}  ",
        f"Device: {machine['device_name']} ({machine['device']}); CPU {machine['cpu']}, "
        f"{machine['cpu_count']} cores, torch {machine['torch']} with {machine['torch_threads']} "
        "threads",
        "",
        f"Target: training loss ≤ **{record['target']:.4f}** — the median over "
        f"{len(config['seeds'])} seeds of the loss SGD reaches after {config['target_epochs']} "
        f"epochs ({record['task']['loss']}, evaluated on {config['eval_size']} fixed training "
        f"examples every {config['eval_every']} steps; evaluation time is not counted). Every "
        f"optimizer trains for at most {config['max_epochs']} epochs "
        f"({record['max_steps']} steps) at a constant learning rate, from the same initial "
        "weights and data order per seed. Steps and seconds are medians over seeds (a seed that "
        "never reaches the target counts as infinite). Runs are timed one after another, not "
        "interleaved: compare seconds within one record only, and expect a few percent of drift.",
        "",
        "| optimizer | lr | steps to target | seconds to target | time ×SGD | reached | "
        "ms/step | loss at stop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, res in record["results"].items():
        steps, secs = res["median_steps"], res["median_seconds"]
        lines.append(
            f"| {label} | {res['lr']:g} | {'not reached' if steps is None else steps} | "
            f"{'—' if secs is None else f'{secs:.1f}'} | {_ratio(res.get('seconds_ratio'))} | "
            f"{res['reached']}/{len(res['seeds'])} | {res['ms_per_step']:.1f} | "
            f"{res['median_final_loss']:.4f} |"
        )
    lines.append("")
    if record.get("notes"):
        lines += ["Notes:", *[f"- {n}" for n in record["notes"]], ""]
    return "\n".join(lines)


def render(record: dict[str, Any]) -> str:
    """Markdown for either record kind."""
    if record["kind"] == "step-time":
        return render_step_time(record)
    if record["kind"] == "time-to-target":
        return render_time_to_target(record)
    raise ValueError(f"unknown record kind {record['kind']!r}")


def main(argv: Sequence[str] | None = None) -> None:
    """Re-render the markdown of each JSON record given on the command line."""
    parser = argparse.ArgumentParser(description="Render benchmark JSON records as markdown.")
    parser.add_argument("records", nargs="+", type=Path, help="JSON files from scripts/bench.py")
    args = parser.parse_args(argv)
    for path in args.records:
        record = json.loads(path.read_text(encoding="utf-8"))
        out = path.with_suffix(".md")
        out.write_text(render(record), encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()

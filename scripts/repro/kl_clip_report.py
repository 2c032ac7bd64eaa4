"""How often KL clipping (Eq. 16) bound in a set of runs: a Markdown table and a figure of each
run's per-epoch mean ν and share of clipped steps (``kl_clip_nu``, ``kl_clip_rate`` in its
``metrics.jsonl``) beside its learning rate and test accuracy.

    python -m scripts.repro.kl_clip_report results/runs/cpu/kl_clip/* --out results/cpu/kl_clip

Where the clip binds (ν < 1), the update is ``sqrt(κ / Σ pᵀg)·p`` whatever the learning rate
(:func:`eva.scaling.kl_clip_factor`): a run clipped on every step is tuned by κ, not by the lr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness.records import RunRecord
from scripts.repro.plotting import legend, panel_grid, save


def load(run_dir: Path) -> dict[str, Any]:
    """A run's record (``record.json``) with its epochs (``metrics.jsonl``) under ``epochs``.

    Raises:
        ValueError: the folder is not a run with KL-clip metrics (the message says why).
    """
    record = RunRecord(run_dir)
    if not record.data or not record.metrics_path.is_file():
        raise ValueError(f"{run_dir} is not a run folder (no record.json and metrics.jsonl)")
    epochs = record.metrics()
    if not any("kl_clip_nu" in row for row in epochs):
        raise ValueError(f"{run_dir} logged no kl_clip_nu (not a KL-clipped run)")
    return record.data | {"epochs": epochs, "dir": run_dir}


def clipped_on_every_step(epochs: list[dict[str, Any]]) -> int:
    """How many of a run's epochs (``metrics.jsonl`` rows) clipped every step (rate 1)."""
    return sum(row.get("kl_clip_rate") == 1.0 for row in epochs)


def label(run: dict[str, Any]) -> str:
    """``eva, lr 0.2, κ 0.001, seed 0`` from the run's resolved config (``eva (stat_batch 16),
    …`` for statistics from the first samples of each batch)."""
    opt = run["config"]["optimizer"]
    name = opt["name"] + (f" (stat_batch {opt['stat_batch']})" if opt.get("stat_batch") else "")
    return f"{name}, lr {opt['lr']:g}, κ {opt['kl_clip']:g}, seed {run['config']['seed']}"


def order(run: dict[str, Any]) -> tuple[str, int, float, float, int]:
    """Sort key: optimizer, statistics batch (0: whole batch), lr, κ, seed."""
    opt = run["config"]["optimizer"]
    stat_batch = opt.get("stat_batch") or 0
    return opt["name"], stat_batch, opt["lr"], opt["kl_clip"], run["config"]["seed"]


def markdown(runs: list[dict[str, Any]]) -> str:
    """One section per run: its command, status, final test accuracy and a per-epoch table."""
    lines = ["# KL clipping per epoch", ""]
    lines.append(
        "ν: the epoch's mean KL-clip factor (Eq. 16; 1 = not clipped); clipped: the share of "
        "its steps with ν < 1; lr: at the epoch's end. Rendered by `python -m "
        "scripts.repro.kl_clip_report` from each run's `metrics.jsonl`."
    )
    lines += [
        "",
        "| run | status | epochs | epochs clipped on every step | last test acc. |",
        "|---|---|---:|---:|---:|",
    ]
    for run in runs:
        last = run["epochs"][-1]
        always = clipped_on_every_step(run["epochs"])
        lines.append(
            f"| {label(run)} | {run['status']} | {last['epoch']} | {always} "
            f"| {100 * last['test_acc']:.2f} |"
        )
    for run in runs:
        last = run["epochs"][-1]
        lines += ["", f"## {label(run)}", ""]
        lines.append(f"Command: `{run['command']}`  ")
        lines.append(
            f"Status: {run['status']}; record: `{run['dir']}`; test accuracy "
            f"{100 * last['test_acc']:.2f} % after epoch {last['epoch']}"
        )
        lines += ["", "| epoch | lr | ν | clipped | test acc. |", "|---:|---:|---:|---:|---:|"]
        for row in run["epochs"]:
            acc = f"{100 * row['test_acc']:.2f}" if "test_acc" in row else "—"
            lines.append(
                f"| {row['epoch']} | {row['lr']:.3g} | {row['kl_clip_nu']:.3g} "
                f"| {100 * row['kl_clip_rate']:.1f} % | {acc} |"
            )
    return "\n".join(lines) + "\n"


def draw(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """ν (log scale) and test accuracy against epochs, one line per run."""
    fig, axes = panel_grid(1, 2, width=4.2)
    nu_ax, acc_ax = axes[0]
    for run in runs:
        epochs = [row["epoch"] for row in run["epochs"]]
        accs = [100 * row.get("test_acc", float("nan")) for row in run["epochs"]]
        (line,) = acc_ax.plot(epochs, accs, marker="o", ms=3, label=label(run))
        nus = [row["kl_clip_nu"] for row in run["epochs"]]
        nu_ax.plot(epochs, nus, marker="o", ms=3, color=line.get_color())
    nu_ax.set(yscale="log", xlabel="epoch", ylabel="mean ν (1 = not clipped)")
    acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)")
    legend(acc_ax, fontsize=7)
    return save(fig, out.parent, out.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (train.py's run dirs)")
    parser.add_argument("--out", type=Path, required=True, help="output stem: writes .md, .png")
    args = parser.parse_args(argv)
    try:
        runs = sorted((load(d) for d in args.runs), key=order)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown(runs))
    for path in (args.out.with_suffix(".md"), *draw(runs, args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

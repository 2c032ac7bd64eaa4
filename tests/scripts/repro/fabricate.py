"""Fabricated run records (``record.json`` and ``metrics.jsonl`` as ``train.py`` writes them)
for the reproduction's tuning, tables and figures, written without training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from harness.records import RunRecord
from scripts.repro.run import Layout
from scripts.repro.sweeps import Sweep
from scripts.repro.targets import target
from scripts.repro.tuning import chosen_lr


def fabricate(
    layout: Layout, sweep: Sweep, run: dict[str, str], summary: dict, curve=(), config=None
) -> Path:
    """A completed run's record, as train.py writes it, with chosen numbers (``config``: the
    run's overrides to write into its config, e.g. ``optimizer.lr``)."""
    record = RunRecord(layout.run_dir(sweep, run))
    optimizer: dict = {"name": run.get("optimizer", "kfac")}
    if optimizer["name"] in ("kfac", "shampoo"):
        optimizer["update_interval"] = int(run.get("optimizer.update_interval", 10))
    tree: dict = {"optimizer": optimizer}
    for key, value in (config or {}).items():
        if key in ("optimizer", "model", "dataset"):
            tree.setdefault(key, {})["name"] = value
            continue
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    record.start(tree, "fabricated", False)
    for row in curve:
        record.log_epoch(row)
    record.finish("completed", summary=summary)
    return record.dir


# The ``lm`` target's settings as its grid labels them (fabricated below as SWEEPS, STEP_MS).
LABELS = (
    "optimizer=adamw",
    "optimizer=sgd,optimizer.weight_decay=0.0005",
    "optimizer=eva,optimizer.weight_decay=0.0005",
    "optimizer=eva_adamw",
    "optimizer=eva_adamw,optimizer.damping=1e-09",
    "optimizer=kfac,optimizer.weight_decay=0.0005",
    "optimizer=shampoo,optimizer.weight_decay=0.0005",
)

SWEEPS = {  # seed 0's final validation loss per lr (nan: diverged), curve before the last epoch
    LABELS[0]: ((1.60, 1.50, 1.55), (2.0, 1.7)),
    LABELS[1]: ((1.90, 1.80, math.nan), (2.2, 2.0)),
    LABELS[2]: ((1.85, 1.80, 1.80), (2.1, 1.9)),  # tie: the smaller lr
    LABELS[3]: ((1.61, 1.52, 1.56), (1.9, 1.6)),
    LABELS[4]: ((1.58, 1.49, 1.70), (1.8, 1.55)),
    LABELS[5]: ((1.95, 1.82, 1.84), (2.3, 2.0)),
    LABELS[6]: ((1.70, 1.65, 1.75), (2.0, 1.8)),
}


STEP_MS = (200.0, 180.0, 250.0, 260.0, 260.0, 400.0, 500.0)


def fabricate_lm_run(layout, sweep, run, final: float, early: tuple[float, float]) -> None:
    """A 3-epoch run (100 steps each) ending at ``final`` (accuracy: higher at higher lr, so that
    choosing by accuracy would pick another lr); nan: a diverged run."""
    if math.isnan(final):
        record = RunRecord(layout.run_dir(sweep, run))
        record.start({}, "x", False)
        record.finish("failed", error="Diverged: training loss is nan at step 7")
        return
    acc = 0.3 + float(run["optimizer.lr"])
    rows = [
        {"epoch": e + 1, "step": 100 * (e + 1), "test_loss": v, "test_bpb": v / math.log(2)}
        for e, v in enumerate((*early, final))
    ]
    summary = {"test_loss": final, "test_bpb": final / math.log(2), "test_acc": acc}
    fabricate(layout, sweep, run, summary, rows, config=run)


def fabricate_lm_target(layout: Layout) -> None:
    tgt = target("lm", layout.scale)
    for tuned in tgt.tuned:
        losses, early = SWEEPS[tuned.label]
        sweep = tuned.sweep()
        for run, loss in zip(sweep.runs(), losses, strict=True):
            fabricate_lm_run(layout, sweep, run, loss, early)
        lr = chosen_lr(tuned, layout)
        best = losses[tuned.lrs.index(lr)]
        for run in tuned.final(lr).runs():  # seed 1 ends 0.02 higher
            fabricate_lm_run(layout, tuned.final(lr), run, best + 0.02 * int(run["seed"]), early)
    algorithms = {
        label: {"time_ms": {"mean": ms, "median": ms}} for label, ms in zip(LABELS, STEP_MS)
    }
    layout.bench.mkdir(parents=True, exist_ok=True)
    record = {"models": {"gpt": {"algorithms": algorithms}}}
    (layout.bench / "steptime-cpu-lm.json").write_text(json.dumps(record))

"""The ``kl_sweep`` table (:mod:`scripts.repro.kl_grid`): per method and κ, test accuracy over
seeds, its difference to SGD, and how many epochs the clip bound on every step.

Rows come from the runs' overrides (``optimizer``, ``optimizer.kl_clip``; none for the default
κ), so a row exists before its runs do. "Epochs clipped on every step" counts the epochs whose
``kl_clip_rate`` (train.py's per-epoch share of steps with ν < 1) is 1, averaged over the
finished seeds (— for no clip and for records from before train.py logged it): where it is most
epochs, κ is what set the step size.
"""

from __future__ import annotations

import math
import statistics

from scripts.repro.kl_clip_report import clipped_on_every_step
from scripts.repro.kl_grid import DEFAULT_KL_CLIP, METHODS, NO_CLIP
from scripts.repro.records import Cell, Run, cell, difference, select, verdict
from scripts.repro.run import Layout
from scripts.repro.sweeps import Target
from scripts.repro.table import Table, name
from scripts.repro.tuning import chosen_lr, chosen_text


def kappa(run: Run) -> float:
    """The run's κ from its overrides (none: the default; ``inf``: no clip)."""
    value = run.overrides.get("optimizer.kl_clip")
    if value is None:
        return DEFAULT_KL_CLIP
    return math.inf if value == NO_CLIP else float(value)


def kappa_text(value: float) -> str:
    """κ as its row shows it: ``0.001 (default)``, ``0.01``, ``no clip``."""
    if value == math.inf:
        return "no clip"
    return f"{value:g}" + (" (default)" if value == DEFAULT_KL_CLIP else "")


def clipped_epochs(runs: list[Run]) -> str:
    """Mean over the finished runs of the number of epochs clipped on every step."""
    counts = [
        clipped_on_every_step(r.epochs)
        for r in runs
        if r.status == "completed" and any("kl_clip_rate" in row for row in r.epochs)
    ]
    return f"{statistics.fmean(counts):.1f}" if counts else "—"


def sgd_runs(target: Target, runs: list[Run], layout: Layout) -> tuple[list[Run], str]:
    """SGD's runs at its chosen lr (the target's tuned SGD, else its SGD sweep) and that lr."""
    sgd = [r for r in runs if r.overrides.get("optimizer") == "sgd"]
    if not target.tuned:
        return sgd, str(sgd[0].get("optimizer.lr", "—")) if sgd else "—"
    tuned = target.tuned[0]
    lr = chosen_lr(tuned, layout)
    return (select(sgd, optimizer__lr=lr) if lr is not None else []), chosen_text(tuned, layout)


def kl_sweep(target: Target, runs: list[Run], layout: Layout) -> Table:
    header = ["Method", "κ", "lr", "test acc.", "− SGD", "epochs clipped on every step"]
    sgd, sgd_lr = sgd_runs(target, runs, layout)
    base = cell(sgd)
    rows = [["SGD", "—", sgd_lr, base.text(), "—", "—"]]
    findings = []
    for method in METHODS:
        mine = [r for r in runs if r.overrides.get("optimizer") == method]
        means: dict[str, Cell] = {}
        for k in sorted({kappa(r) for r in mine}):
            group = [r for r in mine if kappa(r) == k]
            c, lr = cell(group), str(group[0].get("optimizer.lr", "—"))
            row = [name(method), kappa_text(k), lr, c.text(), verdict(difference(c, base))]
            rows.append([*row, clipped_epochs(group)])
            if c.mean is not None:
                means[kappa_text(k)] = c
        if len(means) > 1:
            findings.append(_spread(name(method), means, base))
    return Table(header, rows, findings)


def _spread(method: str, cells: dict[str, Cell], sgd: Cell) -> str:
    """How far κ moved the method's mean accuracy, and its best κ against SGD (the best of
    several means: an optimistic pick)."""
    low = min(cells, key=lambda k: cells[k].mean or 0.0)
    high = max(cells, key=lambda k: cells[k].mean or 0.0)
    return (
        f"{method}: mean accuracy {cells[low].mean:.2f} (κ {low}) to {cells[high].mean:.2f} "
        f"(κ {high}) across κ; at its best κ, − SGD {verdict(difference(cells[high], sgd))}."
    )

"""A target's runs as rows: identity (from the overrides and the record's config) and results.

Nothing here trains or reads W&B: rows come from ``record.json`` and ``metrics.jsonl`` in the
run directories a target's sweeps name (:meth:`scripts.repro.run.Layout.run_dir`). A run with no
record is ``missing``; a killed one ``running``/``failed``; a diverged one ``diverged``.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.records import RunRecord
from scripts.repro.run import Layout
from scripts.repro.sweeps import Sweep, Target
from scripts.repro.tuning import chosen_lr, current_sweep

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.csv")


@dataclass
class Run:
    """One run of a target: its identity, status, final summary and per-epoch metrics."""

    dir: Path
    status: str
    overrides: dict[str, str]
    config: dict[str, Any]
    summary: dict[str, Any]
    epochs: list[dict[str, Any]] = field(default_factory=list)
    devices: tuple[str, ...] = ()  # what computed its epochs (e.g. a GPU, then the CPU)

    def get(self, path: str, default: Any = None) -> Any:
        """A config value by dotted path (``optimizer.lr``); the override if no record yet."""
        node: Any = self.config
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                group = path.removesuffix(".name")  # `optimizer=eva` sets optimizer.name
                return self.overrides.get(path, self.overrides.get(group, default))
            node = node[part]
        return node

    @property
    def optimizer(self) -> str:
        return str(self.get("optimizer.name", self.overrides.get("optimizer", "?")))

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "diverged")

    def final(self, metric: str) -> float | None:
        """The summary's ``metric`` (accuracies in %), None when not finished or absent."""
        value = self.summary.get(metric)
        if self.status != "completed" or value is None:
            return None
        return 100.0 * value if metric.endswith("_acc") else float(value)

    def curve(self, metric: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of a metric over the evaluated epochs (accuracies in %)."""
        xs, ys = [], []
        for row in self.epochs:
            if metric in row and row[metric] is not None:
                xs.append(int(row["epoch"]))
                ys.append(100.0 * row[metric] if metric.endswith("_acc") else float(row[metric]))
        return xs, ys

    def wall_clock(self) -> list[float]:
        """Training seconds at the end of each evaluated epoch: epoch × the run's median seconds
        per epoch (evaluation excluded). Every epoch does the same work, and the median keeps a
        burst of other load on a shared machine from being charged to one optimizer."""
        seconds = [float(row["train_seconds"]) for row in self.epochs if "train_seconds" in row]
        per_epoch = statistics.median(seconds) if seconds else 0.0
        return [int(row["epoch"]) * per_epoch for row in self.epochs]


def target_sweeps(target: Target, layout: Layout) -> list[Sweep]:
    """The target's sweeps, then each tuned setting's lr sweep and (once its rate is chosen)
    its final seeds."""
    sweeps = list(target.sweeps)
    for tuned in target.tuned:
        sweeps.append(current_sweep(tuned, layout))
        lr = chosen_lr(tuned, layout)
        if lr is not None:
            sweeps.extend(tuned.finals(lr))
    return sweeps


def load_runs(target: Target, layout: Layout) -> list[Run]:
    """Every run the target names, in grid order, with whatever record exists."""
    runs = []
    for sweep in target_sweeps(target, layout):
        for overrides in sweep.runs():
            path = layout.run_dir(sweep, overrides)
            record = RunRecord(path)
            status = record.data.get("status", "missing")
            if status == "failed" and str(record.data.get("error") or "").startswith("Diverged"):
                status = "diverged"
            runs.append(
                Run(
                    path,
                    status,
                    overrides,
                    record.data.get("config", {}),
                    record.data.get("summary", {}),
                    record.metrics(),
                    _devices(record.data),
                )
            )
    return runs


def _devices(data: dict[str, Any]) -> tuple[str, ...]:
    """The record's devices (records written before they were kept: its host's, if any)."""
    if data.get("devices"):
        return tuple(data["devices"])
    device = data.get("host", {}).get("device")
    return (device,) if device else ()


@dataclass(frozen=True)
class Cell:
    """Mean ± std over seeds of one metric, with how many runs finished and diverged."""

    values: tuple[float, ...]
    expected: int
    diverged: int

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, digits: int = 2) -> str:
        """``91.20 ± 0.31`` (sample std over seeds); notes for missing or diverged seeds."""
        if not self.values:
            return "diverged" if self.diverged else "not run"
        text = f"{self.mean:.{digits}f}"
        if self.std is not None:
            text += f" ± {self.std:.{digits}f}"
        missing = self.expected - len(self.values) - self.diverged
        notes = []
        if self.diverged:
            notes.append(f"{self.diverged}/{self.expected} diverged")
        if missing:
            notes.append(f"{missing}/{self.expected} not run")
        return text + (f" ({', '.join(notes)})" if notes else "")


def difference(a: Cell, b: Cell) -> tuple[float, float] | None:
    """(mean of a − mean of b, its standard error from the seeds' sample variances)."""
    if a.mean is None or b.mean is None or a.std is None or b.std is None:
        return None
    se = (a.std**2 / len(a.values) + b.std**2 / len(b.values)) ** 0.5
    return a.mean - b.mean, se


def verdict(diff: tuple[float, float] | None) -> str:
    """``+0.42 ± 0.15 (higher)``: a difference beyond two standard errors is called a difference."""
    if diff is None:
        return "—"
    d, se = diff
    word = "higher" if d > 2 * se else "lower" if d < -2 * se else "no difference"
    return f"{d:+.2f} ± {se:.2f} ({word})"


def cell(runs: list[Run], metric: str = "test_acc") -> Cell:
    """The :class:`Cell` of ``metric`` over ``runs`` (typically the seeds of one setting)."""
    values = tuple(v for r in runs if (v := r.final(metric)) is not None and math.isfinite(v))
    return Cell(values, len(runs), sum(r.status == "diverged" for r in runs))


def select(runs: list[Run], **where: Any) -> list[Run]:
    """Runs whose config values (dotted paths with ``__`` for ``.``) equal ``where``'s."""
    out = []
    for run in runs:
        if all(str(run.get(k.replace("__", "."))) == str(v) for k, v in where.items()):
            out.append(run)
    return out


def paper_numbers(artifact: str) -> list[dict[str, str]]:
    """Rows of ``paper_numbers.csv`` (the paper's tables, transcribed) for one artifact."""
    with PAPER_NUMBERS.open(newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if row["artifact"] == artifact]


def paper_value(artifact: str, **where: str) -> tuple[float, float | None] | None:
    """(value, std) of the paper's cell matching ``where`` (CSV column → value), or None."""
    for row in paper_numbers(artifact):
        if all(row[k] == str(v) for k, v in where.items()):
            std = row["std"]
            return float(row["value"]), (float(std) if std else None)
    return None

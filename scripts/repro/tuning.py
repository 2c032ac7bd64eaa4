"""Which learning rate a :class:`~scripts.repro.grids.Tuned` setting chose, from its records.

The choice is the rate whose sweep run (first seed) ended with the best final value of the
setting's ``metric`` (:attr:`~scripts.repro.grids.Tuned.metric`): the highest test accuracy by
default (the lowest test loss for tasks without accuracy), the lowest for a loss such as the
language model's ``test_loss``; a diverged run ranks last; ties go to the smaller rate. Nothing
is chosen until every sweep run has finished, so the final seeds never start from a partial
sweep, and the renderers show the same choice the runner made.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from harness.records import RunRecord, finished_run
from scripts.repro.grids import Tuned

if TYPE_CHECKING:  # run.py imports this module
    from scripts.repro.run import Layout


def sweep_scores(tuned: Tuned, layout: Layout) -> dict[float, float | None]:
    """Per swept rate: the :func:`score` of its finished run (higher is better; ``-inf`` if it
    diverged), or None while the run has not finished."""
    sweep = tuned.sweep()
    scores: dict[float, float | None] = {}
    for lr, run in zip(tuned.lrs, sweep.runs(), strict=True):
        run_dir = layout.run_dir(sweep, run)
        done = finished_run(run_dir)
        if done is None:
            scores[lr] = None
            continue
        summary = RunRecord(run_dir).data.get("summary") or {}
        value = score(summary, tuned)
        scores[lr] = value if done["status"] == "completed" and math.isfinite(value) else -math.inf
    return scores


def score(summary: dict[str, object], tuned: Tuned) -> float:
    """A finished run's score, higher is better: its ``tuned.metric`` (negated when minimised);
    without it, an accuracy metric falls back to −test loss; ``-inf`` when neither is there."""
    if tuned.metric in summary:
        value = float(summary[tuned.metric])  # type: ignore[arg-type]
        return -value if tuned.minimise else value
    if not tuned.minimise and "test_loss" in summary:
        return -float(summary["test_loss"])  # type: ignore[arg-type]
    return -math.inf


def chosen_lr(tuned: Tuned, layout: Layout) -> float | None:
    """The best rate of a finished sweep; None while any sweep run is unfinished, or when
    every run diverged."""
    scores = sweep_scores(tuned, layout)
    if any(score is None for score in scores.values()):
        return None
    best = max(scores.values(), key=lambda s: s if s is not None else -math.inf)
    if best is None or best == -math.inf:
        return None
    return min(lr for lr, score in scores.items() if score == best)

"""Which learning rate a :class:`~scripts.repro.sweeps.Tuned` setting chose, from its records.

The choice is the rate whose sweep run (first seed) ended with the best final value of the
setting's ``metric`` (:attr:`~scripts.repro.sweeps.Tuned.metric`): the highest test accuracy by
default (the lowest test loss for tasks without accuracy), the lowest for a loss such as the
language model's ``test_loss``; a diverged run ranks last; ties go to the smaller rate. Nothing
is chosen until every sweep run has finished, so the final seeds never start from a partial
sweep, and the renderers show the same choice the runner made.

A setting with ``extend`` > 0 whose best rate sits on an edge of its finished sweep gets one
more rate past that edge (:func:`swept_rates`), and the choice waits for that run too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from harness.records import RunRecord, finished_run
from scripts.repro.sweeps import Sweep, Tuned, fmt

if TYPE_CHECKING:  # run.py imports this module
    from scripts.repro.run import Layout


def swept_rates(tuned: Tuned, layout: Layout) -> tuple[float, ...]:
    """The rates of the setting's sweep so far, ascending: ``tuned.lrs``, plus one rate past an
    edge for each time a finished sweep's best rate sat on that edge (at most ``tuned.extend``;
    see :meth:`~scripts.repro.sweeps.Tuned.beyond`). A rate added last may not have run yet."""
    rates = tuple(sorted(tuned.lrs))
    while True:
        scores = _scores(tuned, rates, layout)
        best = _best(scores)
        if best is None or (extra := tuned.beyond(rates, best)) is None:
            return rates
        rates = tuple(sorted((*rates, extra)))


def current_sweep(tuned: Tuned, layout: Layout) -> Sweep:
    """The setting's lr sweep over :func:`swept_rates`."""
    return tuned.sweep(swept_rates(tuned, layout))


def sweep_scores(tuned: Tuned, layout: Layout) -> dict[float, float | None]:
    """Per swept rate (:func:`swept_rates`): the :func:`score` of its finished run (higher is
    better; ``-inf`` if it diverged), or None while the run has not finished."""
    return _scores(tuned, swept_rates(tuned, layout), layout)


def _scores(tuned: Tuned, rates: tuple[float, ...], layout: Layout) -> dict[float, float | None]:
    sweep = tuned.sweep(rates)
    scores: dict[float, float | None] = {}
    for lr, run in zip(rates, sweep.runs(), strict=True):
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


def _best(scores: dict[float, float | None]) -> float | None:
    """The best rate of finished scores (ties: the smaller rate); None while a run is
    unfinished or when every run diverged."""
    if not scores or any(score is None for score in scores.values()):
        return None
    best = max(s for s in scores.values() if s is not None)
    if best == -math.inf:
        return None
    return min(lr for lr, score in scores.items() if score == best)


def chosen_lr(tuned: Tuned, layout: Layout) -> float | None:
    """The best rate of a finished sweep (extensions included); None while any sweep run is
    unfinished, or when every run diverged."""
    return _best(sweep_scores(tuned, layout))


def chosen_text(tuned: Tuned, layout: Layout) -> str:
    """The renders' chosen-lr cell: the rate, marked ``(edge of sweep)`` when it is the largest or
    smallest rate swept (the best may lie beyond), or ``sweep unfinished``."""
    rates, lr = swept_rates(tuned, layout), chosen_lr(tuned, layout)
    if lr is None:
        return "sweep unfinished"
    edge = len(rates) > 1 and lr in (rates[0], rates[-1])
    return fmt(lr) + (" (edge of sweep)" if edge else "")

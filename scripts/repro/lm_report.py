"""The ``lm`` target's render: validation loss over steps and over seconds, and the table.

Every setting is shown at its chosen learning rate (the lowest final validation loss of its
seed-0 sweep, :func:`scripts.repro.tuning.chosen_lr`), as the mean over its seeds. Seconds are
*steps × the setting's mean step time measured alone* (``<bench>/<steptime>.json``, written by
``python -m scripts.bench --experiment lm``: all settings in one process, in turn, on the same
batches), not the runs' own clocks: runs may have shared a machine (``reproduce.py --jobs``).
The mean, not the median, so that K-FAC's and Shampoo's refreshes every 10 steps are charged to
them.

Time to target: the target is the highest of the settings' final mean validation losses (every
setting reaches it by its end, the weakest only there); a setting's time is the first evaluated
epoch at which its mean curve over seeds is at or below it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from scripts.repro.plotting import legend, mean_curve, optimizer_style, panel_grid
from scripts.repro.records import Cell, Run, cell, difference, verdict
from scripts.repro.run import Layout
from scripts.repro.sweeps import Target, Tuned, fmt
from scripts.repro.table import Table, name
from scripts.repro.tuning import chosen_lr, chosen_text, swept_rates

METRIC = "test_loss"
LABELS = {"eva": "Eva (on SGD)", "eva_adamw": "Eva (on AdamW)"}


def setting_label(tuned: Tuned) -> str:
    """``Eva (on AdamW), damping 1e-09`` for ``{"optimizer": "eva_adamw", "optimizer.damping":
    1e-9}``; the weight decay is the same for a whole family and left out."""
    optimizer = str(tuned.fixed["optimizer"])
    text = LABELS.get(optimizer, name(optimizer))
    if "optimizer.damping" in tuned.fixed:
        text += f", damping {fmt(tuned.fixed['optimizer.damping'])}"
    return text


def step_times(path: Path) -> tuple[dict[str, float], str | None]:
    """Mean ms per step of each setting (keyed by its :attr:`Tuned.label`) of a step-time record,
    and a note when there is none or it cannot be read (one line)."""
    if not path.exists():
        return {}, f"No step-time record `{path.name}`: no seconds (the time panel is empty)."
    try:
        model = next(iter(json.loads(path.read_text())["models"].values()))
        times = {k: float(v["time_ms"]["mean"]) for k, v in model["algorithms"].items()}
    except (ValueError, KeyError, TypeError, StopIteration, AttributeError) as err:
        return {}, f"Step-time record `{path.name}` is unreadable ({type(err).__name__}: {err})."
    return times, None


@dataclass
class Setting:
    """One tuned setting: its chosen lr, its runs at that lr and what they show."""

    tuned: Tuned
    label: str
    lr: float | None
    runs: list[Run]
    sweep: list[Cell]
    rates: tuple[float, ...]
    chosen: str

    @property
    def final(self) -> Cell:
        return cell(self.runs, METRIC)

    def curve(self) -> tuple[list[int], list[float]]:
        """(steps, mean validation loss over the completed seeds) at every evaluated epoch."""
        done = [r for r in self.runs if r.status == "completed"]
        epochs, losses = mean_curve(done, METRIC)
        steps = {int(row["epoch"]): int(row["step"]) for row in done[0].epochs} if done else {}
        return [steps[e] for e in epochs], losses


def settings(target: Target, runs: list[Run], layout: Layout) -> list[Setting]:
    """Every tuned setting with its runs (chosen lr, all seeds) and its sweep (seed 0 per lr)."""
    by_dir = {r.dir: r for r in runs}
    out = []
    for tuned in target.tuned:
        rates = swept_rates(tuned, layout)
        sweep = tuned.sweep(rates)
        seed0 = [by_dir[layout.run_dir(sweep, run)] for run in sweep.runs()]
        lr = chosen_lr(tuned, layout)
        mine: list[Run] = []
        if lr is not None:
            final = tuned.final(lr)
            mine = [seed0[rates.index(lr)]]
            mine += [by_dir[layout.run_dir(final, run)] for run in final.runs()]
        sweep_cells = [cell([r], METRIC) for r in seed0]
        label = setting_label(tuned)
        chosen = chosen_text(tuned, layout)
        out.append(Setting(tuned, label, lr, mine, sweep_cells, rates, chosen))
    return out


def _time_to(setting: Setting, goal: float | None, ms: float | None) -> str:
    """The time-to-target cell: the first step whose mean loss is at or below ``goal``, and its
    seconds at ``ms`` per step."""
    steps, losses = setting.curve()
    if goal is None or not losses:
        return "—"
    reached = next((s for s, v in zip(steps, losses, strict=True) if v <= goal + 1e-12), None)
    if reached is None:
        return "never"
    return f"step {reached}" + (f", {reached * ms / 1000:.3g} s" if ms is not None else "")


def build(target: Target, runs: list[Run], layout: Layout) -> tuple[Figure, Table]:
    """The two-panel figure and the table (with its findings) of the ``lm`` target."""
    bench = str(target.settings.get("steptime", ""))
    times, time_note = step_times(layout.bench / f"{bench}.json")
    rows = settings(target, runs, layout)
    means = [m for s in rows if (m := s.final.mean) is not None]
    goal = max(means) if means else None
    adamw = next((s for s in rows if s.tuned.fixed["optimizer"] == "adamw"), None)
    base_ms = times.get(adamw.tuned.label) if adamw else None
    fig, axes = panel_grid(1, 2, width=5.0, height=3.6)
    header = ["Setting", "lr: final val. loss (seed 0)", "chosen lr", "val. loss (nats/byte)"]
    header += ["bits per byte", "− AdamW", "to target", "step time ÷ AdamW"]
    table_rows = []
    for s in rows:
        ms = times.get(s.tuned.label)
        style = optimizer_style(str(s.tuned.fixed["optimizer"]))
        if "optimizer.damping" in s.tuned.fixed:
            style = {**style, "linestyle": "--"}
        steps, losses = s.curve()
        if losses:
            seeds = len([r for r in s.runs if r.status == "completed"])
            label = f"{s.label} (lr {fmt(s.lr)}, {seeds} seed{'s' * (seeds > 1)})"  # type: ignore[arg-type]
            axes[0][0].plot(steps, losses, label=label, **style)
            if ms is not None:
                axes[0][1].plot([x * ms / 1000 for x in steps], losses, label=label, **style)
        sweep = " · ".join(
            f"{fmt(lr)}: {c.text(3)}" for lr, c in zip(s.rates, s.sweep, strict=True)
        )
        diff = difference(s.final, adamw.final) if adamw and s is not adamw else None
        ratio = f"{ms / base_ms:.2f}× ({ms:.1f} ms)" if ms is not None and base_ms else "—"
        table_rows.append(
            [
                s.label,
                sweep,
                s.chosen,
                s.final.text(3) if s.lr is not None else "not run",
                cell(s.runs, "test_bpb").text(3) if s.lr is not None else "not run",
                verdict(diff),
                _time_to(s, goal, ms),
                ratio,
            ]
        )
    for ax in axes[0]:
        ax.set_ylabel("validation loss (nats/byte)")
        if goal is not None:
            ax.axhline(goal, color="black", linestyle=":", linewidth=1)
    axes[0][0].set_xlabel("step")
    axes[0][1].set_xlabel(f"training time (s): steps × mean ms/step alone ({bench})")
    legend(axes[0][0], fontsize=6, loc="upper right")
    fig.suptitle(f"{target.title} (mean over seeds)", fontsize=9)
    fig.tight_layout()
    return fig, Table(header, table_rows, _findings(rows, goal, times, time_note, bench))


def _findings(
    rows: list[Setting],
    goal: float | None,
    times: dict[str, float],
    time_note: str | None,
    bench: str,
) -> list[str]:
    seeds = rows[0].tuned.seeds if rows else ()
    lines = [
        "Each setting's lr is the one whose seed-0 run ended with the lowest validation loss "
        f"(nats per byte); its columns are the mean ± sample std over seeds {seeds} at that lr "
        "(seed 0 included); bits per byte = nats / ln 2. '− AdamW' is the difference of the "
        "mean losses ± one standard error ('lower' = better, beyond two standard errors).",
    ]
    if goal is None:
        return [*lines, "No setting has a finished run at its chosen lr yet: no target."]
    finals = [(s.final.mean, s.label) for s in rows if s.final.mean is not None]
    best = min(finals)
    lines.append(
        f"Lowest final validation loss: {best[1]} ({best[0]:.3f} nats/byte, "
        f"{best[0] / math.log(2):.3f} bits/byte). Target {goal:.3f} nats/byte: the highest of "
        "the settings' final mean losses, so every setting reaches it by its end; 'to target' is "
        "the first evaluated step at which its mean curve is at or below it."
    )
    lines.append(
        time_note
        or f"Step times: mean ms per step from `{bench}` (every setting in one process, in turn, "
        "on the same batches; the mean includes the refreshes of K-FAC and Shampoo every 10 "
        "steps): "
        + ", ".join(f"{s.label} {times[s.tuned.label]:.1f}" for s in rows if s.tuned.label in times)
        + "."
    )
    lines.append(
        "Eva and K-FAC at damping 0.03: the loss is a mean over batch × positions, so b̄ is tiny "
        "and ‖ā‖²‖b̄‖² ≪ γ; Eva then acts as its base optimizer (on SGD scaled by 1/γ) plus KL "
        "clipping. A row labelled with a smaller damping is Eva where the rank-one term acts "
        "(‖ā‖²‖b̄‖² / (γ + ‖ā‖²‖b̄‖²) near 1; see `LM_SMALL_DAMPING` in scripts/repro/lm_grid.py)."
    )
    return lines

"""Fig. 5 at a reduced scale: test accuracy over epochs and over training time, time to target.

The runs are Table 4's (each setting at its tuned learning rate, every seed) plus Shampoo's.
Training time is *steps × the method's mean step time measured alone* by the step-time benchmark
(``results/bench/<steptime>.json``, refresh steps of interval methods included), not the runs'
own clocks: the runs may have shared a machine (``reproduce.py --jobs``), which would charge one
method for another's load. A setting with 16-sample statistics is timed as its whole-batch
method (the benchmark has no such option; reading fewer samples does not make a step slower).

The target is the lowest of the settings' final test accuracies (mean over seeds): every setting
reaches it by its end, the weakest only there (a target every method passes in the first epochs
would say nothing). A setting's time to target is the first evaluated epoch at which its
mean curve over seeds is at or above it.

Where Table 4 also runs its settings for longer (``Tuned.longer``, 20 epochs at the CPU scale),
each longer budget gets a row of panels and a time to target of its own: the same settings at the
same rates, with the target again the lowest final mean at that budget.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from scripts.repro.records import Run, cell, difference, paper_value, select, verdict
from scripts.repro.run import Layout
from scripts.repro.sweeps import Target
from scripts.repro.table import name
from scripts.repro.table4_tuned import longer_budgets, setting_name, tuned_runs
from scripts.repro.tuning import chosen_lr

BENCH_LABEL = {"kfac": "kfac@10", "shampoo": "shampoo@10", "foof": "foof@50"}
"""Benchmark label of each method at its preset's update interval."""


def step_times(path: Path) -> dict[str, float]:
    """Mean milliseconds per step of every algorithm of a one-model benchmark record."""
    if not path.exists():
        return {}
    record = json.loads(path.read_text())
    model = next(iter(record["models"].values()))
    return {k: v["time_ms"]["mean"] for k, v in model["algorithms"].items() if "time_ms" in v}


def settings(
    target: Target, runs: list[Run], layout: Layout, epochs: int | None = None
) -> dict[str, list[Run]]:
    """Label → the runs of that setting shown in the figure (tuned settings at their lr); with
    ``epochs``, the tuned settings' runs at that longer budget (no untuned sweeps)."""
    out: dict[str, list[Run]] = {}
    for tuned in target.tuned:
        lr = chosen_lr(tuned, layout)
        if lr is None or (epochs is not None and epochs not in tuned.longer):
            continue
        mine = select(tuned_runs(runs, tuned, epochs), optimizer__lr=lr)
        out[f"{setting_name(tuned.fixed)} (lr {lr:g})"] = mine
    if epochs is not None:
        return out
    for sweep in target.sweeps:
        opt = str(sweep.fixed["optimizer"])
        out[f"{name(opt)} (lr {sweep.fixed['optimizer.lr']})"] = select(
            runs, optimizer__name=opt, optimizer__lr=sweep.fixed["optimizer.lr"]
        )
    return out


Reached = dict[str, tuple[float | None, float | None, int]]
"""Label → (first epoch at the target, seconds to it, seeds) of one budget."""


def draw(target: Target, runs: list[Run], layout: Layout) -> tuple[Figure, list[str]]:
    """Two panels per budget (the experiment's own, then each longer one) and the findings
    (time to target per setting, ratios to Eva's)."""
    from scripts.repro.plotting import legend, panel_grid  # drawing helpers

    bench_name = str(target.settings.get("steptime", ""))
    times = step_times(layout.bench / f"{bench_name}.json")
    longer = longer_budgets(target)
    budgets: list[int | None] = [None, *longer]
    fig, axes = panel_grid(len(budgets), 2, width=5.0, height=3.6)
    findings: list[str] = []
    for row, epochs in zip(axes, budgets, strict=True):
        groups = {
            k: [r for r in v if r.status == "completed"]
            for k, v in settings(target, runs, layout, epochs).items()
        }
        goal, reached = _plot_budget(row, groups, times)
        where = "" if epochs is None else f"{epochs} epochs: "
        row[0].set_xlabel(f"{where}epoch")
        row[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        row[1].set_xlabel(f"{where}training time (s): steps × ms/step alone ({bench_name})")
        legend(row[0], fontsize=6, loc="lower right")
        findings += _findings(groups, reached, goal, times, bench_name, epochs)
    fig.suptitle(target.title, fontsize=9)
    fig.tight_layout()
    return fig, findings


def _plot_budget(
    row: list, groups: dict[str, list[Run]], times: dict[str, float]
) -> tuple[float | None, Reached]:
    """Draw one budget's settings over epochs (``row[0]``) and over seconds (``row[1]``); the
    target (lowest final mean) and when each setting reached it."""
    from scripts.repro.plotting import mean_curve, optimizer_style

    means = [m for v in groups.values() if v and (m := cell(v).mean) is not None]
    goal = min(means) if means else None
    reached: Reached = {}
    for label, members in groups.items():
        if not members:
            continue
        method = members[0].optimizer
        ms = times.get(BENCH_LABEL.get(method, method))
        style = optimizer_style(method)
        if "16-sample" in label:
            style = {**style, "linestyle": "--"}
        epochs, accs = mean_curve(members, "test_acc")
        row[0].plot(epochs, accs, label=label, **style)
        steps = {int(r["epoch"]): int(r["step"]) for r in members[0].epochs}
        if ms is not None:
            row[1].plot([steps[e] * ms / 1000 for e in epochs], accs, label=label, **style)
        if goal is not None:
            first = next((e for e, a in zip(epochs, accs, strict=True) if a >= goal - 1e-9), None)
            seconds = steps[first] * ms / 1000 if first is not None and ms else None
            reached[label] = (first, seconds, len(members))
    for ax in row:
        ax.set_ylabel("test accuracy (%), mean over seeds")
        if goal is not None:
            ax.axhline(goal, color="black", linestyle=":", linewidth=1)
        ax.set_ylim(bottom=40)
    return goal, reached


def _findings(
    groups: dict[str, list[Run]],
    rows: Reached,
    goal: float | None,
    times: dict[str, float],
    bench_name: str,
    epochs: int | None = None,
) -> list[str]:
    """The findings of one budget; ``epochs``: a longer budget's (step times and the paper's
    ratios are said with the experiment's own budget only)."""
    where = "" if epochs is None else f"At {epochs} epochs (the same lrs, every seed): "
    if goal is None:
        return [where + "No setting has a finished run yet: no target."]
    eva = next((v for k, v in rows.items() if k.startswith("Eva, whole")), None)
    parts = []
    for label, members in groups.items():
        if label not in rows:
            parts.append(f"{label}: no finished run yet" if not members else f"{label}: no curve")
            continue
        epoch, seconds, seeds = rows[label]
        if epoch is None:
            parts.append(f"{label}: never")
            continue
        text = f"{label}: epoch {epoch:g}"
        if seconds is not None:
            text += f", {seconds:.0f} s"
            if eva and eva[1]:
                text += f" ({seconds / eva[1]:.2f}× Eva's)"
        parts.append(text + f" ({seeds} seed{'s' * (seeds > 1)})")
    lines = [
        f"{where}Target {goal:.2f}%: the lowest of the settings' final test accuracies (mean "
        "over seeds), so every setting reaches it by its end; first epoch at which the "
        "setting's mean curve is at or above it: " + "; ".join(parts) + "."
    ]
    if epochs is None and times:
        lines.append(
            f"Step times (mean ms, `{bench_name}`): "
            + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
            + "."
        )
    elif epochs is None:
        lines.append(f"No step-time record `{bench_name}.json`: the time panel is empty.")
    finals = {k: cell(v) for k, v in groups.items() if v}
    sgd = next((c for k, c in finals.items() if k.startswith("SGD")), None)
    if sgd is not None:
        lines.append(
            f"{where}Final accuracy − SGD's: "
            + ", ".join(
                f"{k} {verdict(difference(c, sgd))}" for k, c in finals.items() if c is not sgd
            )
            + "."
        )
    if epochs is None:
        paper = [
            f"{name(c)} {v[0]:g}×"
            for c in ("sgd", "kfac", "shampoo")
            if (v := paper_value("fig5", dataset="cifar10", column=c)) is not None
        ]
        lines.append(
            "The paper (CIFAR-10 average, time to target ÷ Eva's): " + ", ".join(paper) + "."
        )
    return lines

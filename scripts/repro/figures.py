"""Figures 3-8 from run records (matplotlib, PNG and PDF), plus the numbers behind them.

Each builder draws one figure and returns the sentences (findings) the Markdown next to it
states: final values, time to target, what ordering held. Colours and markers are fixed per
optimizer across figures, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from matplotlib.axes import Axes

from scripts.repro.plotting import Drawn, legend, mean_curve, optimizer_style, panel_grid, save
from scripts.repro.records import Run, cell, difference, paper_value, select, verdict
from scripts.repro.run import Layout
from scripts.repro.sweeps import Target
from scripts.repro.table import name


def _label(run: Run) -> str:
    label = name(run.optimizer)
    interval = run.get("optimizer.update_interval")
    if run.optimizer in ("kfac", "shampoo", "foof") and interval is not None:
        label += f"@{interval}"
    return label


def _curve(ax: Axes, run: Run, metric: str, label: str | None = None, x: str = "epoch") -> None:
    epochs, values = run.curve(metric)
    if not values:
        return
    xs: list[float] = list(map(float, epochs))
    if x == "time":
        clock = run.wall_clock()
        by_epoch = {int(row["epoch"]): t for row, t in zip(run.epochs, clock, strict=True)}
        xs = [by_epoch[e] for e in epochs]
    ax.plot(xs, values, label=label or _label(run), **optimizer_style(run.optimizer))


def _panels(runs: list[Run]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for r in runs:
        seen[(str(r.get("model.name")), str(r.get("dataset.name")))] = None
    return list(seen)


def _final(run: Run, metric: str) -> str:
    value = run.final(metric)
    if value is None:
        return run.status
    return f"{value:.2f}"


def _by_label(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by their legend label (the seeds of one setting), in grid order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(_label(run), []).append(run)
    return groups


def _plot_mean(ax: Axes, runs: list[Run], metric: str, label: str) -> None:
    """The seeds' mean curve of the finished runs (of all runs while none has finished)."""
    shown = [r for r in runs if r.status == "completed"] or runs
    epochs, values = mean_curve(shown, metric)
    if values:
        n = len(shown)
        ax.plot(
            epochs,
            values,
            label=f"{label} ({n} seed{'s' * (n > 1)})",
            **optimizer_style(runs[0].optimizer),
        )


def _loss_and_accuracy(runs: list[Run], groups: list[list[str]], title: str) -> Drawn:
    """Training loss (top) and test accuracy (bottom) per epoch, mean over seeds; one column per
    panel × group; findings: final values (mean ± std over seeds) and the pair's difference."""
    columns = [(panel, group) for panel in _panels(runs) for group in groups]
    fig, axes = panel_grid(2, len(columns))
    findings = []
    for j, ((model, data), group) in enumerate(columns):
        subset = [
            r for r in select(runs, model__name=model, dataset__name=data) if r.optimizer in group
        ]
        labelled = _by_label(subset)
        for label, seeds in labelled.items():
            _plot_mean(axes[0][j], seeds, "train_loss", label)
            _plot_mean(axes[1][j], seeds, "test_acc", label)
        axes[0][j].set_title(f"{name(model)}, {name(data)}", fontsize=9)
        axes[0][j].set_ylabel("training loss")
        axes[1][j].set_ylabel("test accuracy (%)")
        axes[1][j].set_xlabel("epoch")
        legend(axes[0][j], fontsize=7)
        accs = {label: cell(seeds) for label, seeds in labelled.items()}
        losses = {label: cell(seeds, "train_loss") for label, seeds in labelled.items()}
        line = (
            f"{name(model)}, {name(data)}: final test accuracy "
            + ", ".join(f"{k} {c.text()}" for k, c in accs.items())
            + "; final training loss "
            + ", ".join(f"{k} {c.text(3)}" for k, c in losses.items())
        )
        if len(accs) == 2:
            (a, ca), (b, cb) = accs.items()
            line += f"; {b} − {a}: {verdict(difference(cb, ca))}"
        findings.append(line + ".")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return Drawn(fig, findings)


def fig3(target: Target, runs: list[Run]) -> Drawn:
    return _loss_and_accuracy(runs, [["foof", "foof_rank1"]], target.title)


def fig8(target: Target, runs: list[Run]) -> Drawn:
    return _loss_and_accuracy(runs, [["foof", "eva_f"], ["shampoo", "eva_s"]], target.title)


def best_runs(runs: list[Run]) -> dict[str, Run]:
    """Per optimizer, the completed run with the lowest final training loss (the paper tuned
    each optimizer's learning rate); an optimizer with no completed run keeps its first run."""
    best: dict[str, Run] = {}
    for run in runs:
        loss, current = run.final("train_loss"), best.get(run.optimizer)
        if current is None or (
            loss is not None
            and (current.final("train_loss") is None or loss < current.final("train_loss"))
        ):
            best[run.optimizer] = run
    return best


def fig4(target: Target, runs: list[Run]) -> Drawn:
    datasets = list(dict.fromkeys(str(r.get("dataset.name")) for r in runs))
    fig, axes = panel_grid(2, len(datasets))
    findings = []
    for j, data in enumerate(datasets):
        subset = select(runs, dataset__name=data)
        best = best_runs(subset)
        for run in best.values():
            label = f"{name(run.optimizer)} (lr {run.get('optimizer.lr')})"
            _curve(axes[0][j], run, "train_loss", label)
            _curve(axes[1][j], run, "test_loss", label)
        axes[0][j].set_title(name(data), fontsize=9)
        axes[0][j].set_ylabel("training loss")
        axes[1][j].set_ylabel("test loss")
        axes[1][j].set_xlabel("epoch")
        for ax in (axes[0][j], axes[1][j]):
            ax.set_yscale("log")
        legend(axes[0][j], fontsize=7)
        ranked = sorted(best.values(), key=lambda r: r.final("train_loss") or math.inf)
        findings.append(
            f"{name(data)}: final training loss, best first: "
            + ", ".join(f"{name(r.optimizer)} {_final(r, 'train_loss')}" for r in ranked)
            + "; test loss: "
            + ", ".join(f"{name(r.optimizer)} {_final(r, 'test_loss')}" for r in ranked)
            + " (the paper: K-FAC ≈ Eva fastest, then Shampoo, then Adagrad and SGD)."
        )
        dropped = [r for r in subset if r not in best.values()]
        if dropped:
            findings.append(
                f"{name(data)}, not shown (a better learning rate exists): "
                + ", ".join(
                    f"{name(r.optimizer)} lr {r.get('optimizer.lr')} {_final(r, 'train_loss')}"
                    for r in dropped
                )
                + "."
            )
    fig.suptitle(target.title, fontsize=10)
    fig.tight_layout()
    return Drawn(fig, findings)


def time_to_target(run: Run, target_acc: float) -> float | None:
    """Training seconds until the test accuracy first reaches ``target_acc`` (None: never)."""
    epochs, accs = run.curve("test_acc")
    clock = dict(zip((int(r["epoch"]) for r in run.epochs), run.wall_clock(), strict=True))
    for epoch, acc in zip(epochs, accs, strict=True):
        if acc >= target_acc - 1e-9:
            return clock[epoch]
    return None


def _wall_clock(target: Target, runs: list[Run], label: Callable[[Run], str]) -> Drawn:
    """Test accuracy over training seconds per panel; inset: time to target relative to Eva."""
    panels = _panels(runs)
    fig, axes = panel_grid(1, len(panels), width=4.4, height=3.4)
    findings = []
    for j, (model, data) in enumerate(panels):
        ax = axes[0][j]
        subset = [r for r in select(runs, model__name=model, dataset__name=data) if r.finished]
        sgd = next((r for r in subset if r.optimizer == "sgd"), None)
        finals = [r.final("test_acc") for r in subset if r.final("test_acc") is not None]
        if sgd is not None and sgd.final("test_acc") is not None:
            goal, goal_text = sgd.final("test_acc"), "SGD's final accuracy"
        elif finals:
            goal, goal_text = min(finals), "the lowest final accuracy"
        else:
            continue
        for run in subset:
            _curve(ax, run, "test_acc", label(run), x="time")
        ax.axhline(goal, color="black", linestyle=":", linewidth=1)  # type: ignore[arg-type]
        ax.set_title(f"{name(model)}, {name(data)}", fontsize=9)
        ax.set_xlabel("training time (s): epochs × median s/epoch")
        ax.set_ylabel("test accuracy (%)")
        legend(ax, fontsize=7, loc="lower right")
        times = {label(r): time_to_target(r, goal) for r in subset}  # type: ignore[arg-type]
        eva = next((t for k, t in times.items() if k == "Eva"), None)
        if eva:
            inset = ax.inset_axes((0.12, 0.55, 0.35, 0.35))
            keys = [k for k, t in times.items() if t is not None]
            inset.bar(
                range(len(keys)),
                [times[k] / eva for k in keys],  # type: ignore[operator]
                color=[optimizer_style(k.lower().replace("-", ""))["color"] for k in keys],
            )
            inset.set_xticks(range(len(keys)), keys, fontsize=5, rotation=45)
            inset.tick_params(axis="y", labelsize=5)
            inset.set_title("time ÷ Eva's", fontsize=6)
        parts = []
        for key, seconds in times.items():
            if seconds is None:
                parts.append(f"{key} never")
            else:
                rel = f" ({seconds / eva:.2f}× Eva)" if eva else ""
                parts.append(f"{key} {seconds:.0f} s{rel}")
        findings.append(
            f"{name(model)}, {name(data)} — target {goal:.2f}% ({goal_text}): "
            + ", ".join(parts)
            + "."
        )
    fig.suptitle(target.title, fontsize=10)
    fig.tight_layout()
    return Drawn(fig, findings)


def fig5(target: Target, runs: list[Run]) -> Drawn:
    drawn = _wall_clock(target, runs, _label)
    paper = [
        f"{name(c)} {v[0]:g}×"
        for c in ("sgd", "kfac", "shampoo")
        if (v := paper_value("fig5", dataset="cifar10", column=c)) is not None
    ]
    drawn.findings.append(
        "The paper (CIFAR-10 average, time to target ÷ Eva's): " + ", ".join(paper) + "."
    )
    return drawn


def fig6(target: Target, runs: list[Run]) -> Drawn:
    drawn = _wall_clock(target, runs, _label)
    drawn.findings.append(
        "The paper: K-FAC@1 takes 1.45× (ResNet-110) and 5.27× (VGG-19) Eva's time to target; "
        "K-FAC@10 is on par with Eva on ResNet-110 and 1.58× on VGG-19."
    )
    return drawn


def fig7(target: Target, runs: list[Run]) -> Drawn:
    lr0 = float(target.settings["lr"])  # type: ignore[arg-type]
    batch0 = int(target.settings["batch"])  # type: ignore[call-overload]
    defaults = {
        "optimizer.lr": lr0,
        "trainer.batch_size": batch0,
        "optimizer.damping": 0.03,
        "optimizer.running_avg": 0.95,
    }
    panels = [
        ("optimizer.lr", "learning rate", ("sgd", "kfac", "eva")),
        ("trainer.batch_size", "batch size (lr scaled linearly)", ("sgd", "kfac", "eva")),
        ("optimizer.damping", "damping", ("kfac", "eva")),
        ("optimizer.running_avg", "running average", ("kfac", "eva")),
    ]

    def value(run: Run, key: str) -> float:
        found = run.get(key)
        return float(found) if found is not None else defaults[key]

    def on_panel(run: Run, key: str) -> bool:
        """All hyper-parameters but ``key`` at their defaults (lr follows the batch size)."""
        for other, default in defaults.items():
            if other == key:
                continue
            if other == "optimizer.lr" and key == "trainer.batch_size":
                default = lr0 * value(run, key) / batch0
            if not math.isclose(value(run, other), default, rel_tol=1e-9):
                return False
        return True

    fig, axes = panel_grid(1, 4)
    findings = []
    for j, (key, label, opts) in enumerate(panels):
        ax = axes[0][j]
        for opt in opts:
            points = sorted(
                (value(run, key), acc)
                for run in runs
                if run.optimizer == opt
                and (acc := run.final("test_acc")) is not None
                and on_panel(run, key)
            )
            if points:
                ax.plot(*zip(*points, strict=True), label=name(opt), **optimizer_style(opt))
                findings.append(
                    f"{label}: {name(opt)} "
                    + ", ".join(f"{x:g} → {y:.2f}%" for x, y in points)
                    + "."
                )
        if key != "optimizer.running_avg":
            ax.set_xscale("log", base=2 if key == "trainer.batch_size" else 10)
        values = sorted({x for line in ax.get_lines() for x in line.get_xdata()})
        ax.set_xticks(values, [f"{v:g}" for v in values], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        legend(ax, fontsize=7)
    fig.suptitle(target.title, fontsize=10)
    fig.tight_layout()
    return Drawn(fig, findings)


BUILDERS: dict[str, Callable[[Target, list[Run]], Drawn]] = {
    builder.__name__: builder for builder in (fig3, fig4, fig5, fig6, fig7, fig8)
}


def draw(
    target: Target, runs: list[Run], out: Path, layout: Layout | None = None
) -> tuple[list[Path], list[str]]:
    """Draw a ``fig*`` target into ``out/<name>.png`` and ``.pdf``; returns paths, findings.
    ``layout`` locates tuned settings' records and step-time records (Fig. 5 with tuned runs)."""
    if target.name == "fig5" and target.tuned and layout is not None:
        from scripts.repro import time_to_target

        drawn = Drawn(*time_to_target.draw(target, runs, layout))
    else:
        drawn = BUILDERS[target.name](target, runs)
    return save(drawn.figure, out, target.name), drawn.findings

"""What every figure shares: fixed colours and markers per optimizer, the panel grid, legends,
the mean curve over seeds, and writing a figure to PNG and PDF (the builders:
:mod:`scripts.repro.figures`, :mod:`scripts.repro.time_to_target`, :mod:`scripts.repro.lm_report`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from scripts.repro.records import Run

STYLE = {
    "sgd": ("tab:blue", "o"),
    "adagrad": ("tab:purple", "v"),
    "adamw": ("tab:pink", "P"),
    "shampoo": ("tab:green", "s"),
    "kfac": ("tab:orange", "^"),
    "foof": ("tab:brown", "D"),
    "foof_rank1": ("tab:olive", "d"),
    "mfac": ("tab:gray", "X"),
    "eva": ("tab:red", "*"),
    "eva_adamw": ("tab:cyan", "*"),
    "eva_f": ("tab:red", "*"),
    "eva_s": ("tab:red", "*"),
}


@dataclass
class Drawn:
    """A drawn figure and what it shows in words."""

    figure: Figure
    findings: list[str]


def optimizer_style(key: str) -> dict[str, object]:
    """Line colour and marker of an optimizer (``kfac@10``: K-FAC's), the same in every figure."""
    color, marker = STYLE.get(key.split("@")[0], ("black", "."))
    return {"color": color, "marker": marker, "markersize": 4, "linewidth": 1.4}


def legend(ax: Axes, **options: object) -> None:
    """A legend when the axes have labelled lines (a panel with no finished run has none)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**options)  # type: ignore[arg-type]


def panel_grid(
    rows: int, cols: int, width: float = 3.6, height: float = 2.9
) -> tuple[Figure, list]:
    """A figure of ``rows`` × ``cols`` panels of ``width`` × ``height`` inches (axes[row][col])."""
    fig = Figure(figsize=(width * cols, height * rows))  # no pyplot: no GUI backend, no registry
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    return fig, [list(r) for r in axes]


def mean_curve(runs: list[Run], metric: str) -> tuple[list[int], list[float]]:
    """The mean over ``runs`` (seeds) of a metric at every epoch all of them reached."""
    curves = [dict(zip(*r.curve(metric), strict=True)) for r in runs]
    curves = [c for c in curves if c]
    if not curves:
        return [], []
    epochs = sorted(set.intersection(*(set(c) for c in curves)))
    return epochs, [sum(c[e] for c in curves) / len(curves) for e in epochs]


def save(figure: Figure, out: Path, stem: str) -> list[Path]:
    """Write ``out/<stem>.png`` and ``.pdf``; returns the paths. The PDF has no creation date,
    so re-rendering unchanged records leaves the files unchanged."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix in (".png", ".pdf"):
        path = out / f"{stem}{suffix}"
        metadata = {"CreationDate": None} if suffix == ".pdf" else None
        figure.savefig(path, dpi=150, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    return paths

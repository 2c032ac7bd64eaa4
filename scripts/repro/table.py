"""What every rendered table shares: the :class:`Table` a builder returns, the display names of
optimizers, models and datasets, the paper's number for one cell, and a table's Markdown and
LaTeX (the builders: :mod:`scripts.repro.tables`, :mod:`scripts.repro.table4_tuned`,
:mod:`scripts.repro.bench_tables`, :mod:`scripts.repro.lm_report`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scripts.repro.records import paper_value

NAMES = {
    "sgd": "SGD",
    "kfac": "K-FAC",
    "eva": "Eva",
    "adagrad": "Adagrad",
    "adamw": "AdamW",
    "shampoo": "Shampoo",
    "mfac": "M-FAC",
    "foof": "FOOF",
    "foof_rank1": "FOOF (rank-1)",
    "eva_f": "Eva-f",
    "eva_s": "Eva-s",
    "eva_no_momentum": "w/o m.",
    "eva_no_klclip": "w/o KL clip",
    "eva_no_kv": "w/o KVs",
    "vgg19": "VGG-19",
    "resnet110": "ResNet-110",
    "resnet20": "ResNet-20",
    "wrn28_10": "WRN-28-10†",
    "resnet50": "ResNet-50",
    "inception_v4": "Inception-v4",
    "vit_b16": "ViT-B/16",
    "efficientnet_b0": "EffNet-b0",
    "cifar10": "CIFAR-10",
    "cifar10_images": "CIFAR-10 (JPEG)",
    "cifar100": "CIFAR-100",
    "synthetic": "synthetic",
    "mnist": "MNIST",
    "fmnist": "Fashion-MNIST",
    "faces": "FACES",
    "curves": "CURVES",
}


def name(key: str) -> str:
    return NAMES.get(key, key)


@dataclass
class Table:
    """A rendered table: header, rows of cells, and sentences stating what the numbers show."""

    header: list[str]
    rows: list[list[str]]
    findings: list[str] = field(default_factory=list)


def paper_text(artifact: str, **where: Any) -> str:
    """``93.1 ± 0.2`` from the paper's transcribed tables, ``—`` where it has no number."""
    found = paper_value(artifact, **{k: str(v) for k, v in where.items()})
    if found is None:
        return "—"
    value, std = found
    return f"{value:g}" + (f" ± {std:g}" if std is not None else "")


def markdown(table: Table) -> str:
    lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
    ):
        text = text.replace(a, b)
    return (
        text.replace("±", r"$\pm$")
        .replace("×", r"$\times$")
        .replace("−", "$-$")
        .replace("†", r"$^\dagger$")
        .replace("≙", r"$\simeq$")
        .replace("≤", r"$\le$")
    )


def latex(table: Table, caption: str, label: str) -> str:
    """A ``table`` environment with booktabs rules."""
    spec = "ll" + "r" * (len(table.header) - 2)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_tex_escape(caption)}}}",
        rf"\label{{tab:{label}}}",
        r"\resizebox{\linewidth}{!}{%",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_tex_escape(h) for h in table.header) + r" \\",
        r"\midrule",
        *(" & ".join(_tex_escape(c) for c in row) + r" \\" for row in table.rows),
        r"\bottomrule",
        r"\end{tabular}}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"

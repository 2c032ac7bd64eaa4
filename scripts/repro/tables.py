"""Tables 4, 6, 7 and 9 from run records, our numbers beside the paper's (the benchmark tables 5, 8
and 10: :mod:`scripts.repro.bench_tables`), and the Markdown and LaTeX of any table.

Each builder returns a :class:`Table` (header, rows, findings); :mod:`scripts.repro.render`
writes it as Markdown and LaTeX with the target's caption. Accuracies are test accuracy (%) at the
end of training, mean ± sample std over seeds. At a reduced scale the paper's column shows the
row the scale stands in for (e.g. ResNet-20 at 4 epochs beside the paper's ResNet-110 at 100).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scripts.repro.records import Cell, Run, cell, paper_value, select
from scripts.repro.run import Layout
from scripts.repro.sweeps import Target, Tuned, fmt
from scripts.repro.tuning import chosen_lr, chosen_text, swept_rates

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

STAND_IN_MODEL = {"resnet20": "resnet110"}
"""At a reduced scale, the paper's model whose numbers are shown beside ours."""
STAND_IN_DATA = {"cifar10_images": "cifar10", "synthetic": "cifar10"}


def name(key: str) -> str:
    return NAMES.get(key, key)


@dataclass
class Table:
    """A rendered table: header, rows of cells, and sentences stating what the numbers show."""

    header: list[str]
    rows: list[list[str]]
    findings: list[str] = field(default_factory=list)


def _paper(artifact: str, **where: Any) -> str:
    found = paper_value(artifact, **{k: str(v) for k, v in where.items()})
    if found is None:
        return "—"
    value, std = found
    return f"{value:g}" + (f" ± {std:g}" if std is not None else "")


def _stand_in_note(runs: list[Run]) -> list[str]:
    """Which of the paper's rows the paper columns show when ours is a stand-in."""
    notes = []
    for model, data in _rows_of(runs):
        pm, pd = STAND_IN_MODEL.get(model, model), STAND_IN_DATA.get(data, data)
        if (pm, pd) != (model, data):
            notes.append(
                f"Paper columns beside {name(model)} on {name(data)}: the paper's {name(pm)} on "
                f"{name(pd)}, the row this scale stands in for (not the same experiment)."
            )
    return notes


def _budget_map(target: Target) -> dict[str, str]:
    """Our epoch budget → the paper's it stands for (Table 4)."""
    ours = [str(e) for e in target.settings.get("epochs", ())]  # type: ignore[union-attr]
    return dict(zip(ours, ("50", "100", "200"), strict=False))


def _rows_of(runs: list[Run]) -> list[tuple[str, str]]:
    """Distinct (model, dataset) pairs in grid order."""
    seen: dict[tuple[str, str], None] = {}
    for r in runs:
        seen[(str(r.get("model.name")), str(r.get("dataset.name")))] = None
    return list(seen)


def setting_name(setting: dict[str, Any]) -> str:
    """``K-FAC, 16-sample statistics`` for ``{"optimizer": "kfac", "optimizer.stat_batch": 16}``."""
    text = name(str(setting["optimizer"]))
    if setting.get("optimizer.stat_batch") is not None:
        return f"{text}, {setting['optimizer.stat_batch']}-sample statistics"
    return text + (", whole-batch statistics" if setting["optimizer"] != "sgd" else "")


def tuned_runs(runs: list[Run], tuned: Tuned, epochs: int | None = None) -> list[Run]:
    """The runs of one tuned setting at the experiment's own budget (its sweep and its final
    seeds), or those of one of its longer budgets (``epochs``, :attr:`Tuned.longer`)."""
    where = {
        k.replace(".", "__") + ("__name" if k in ("optimizer", "model", "dataset") else ""): v
        for k, v in tuned.fixed.items()
    }
    where.setdefault("optimizer__stat_batch", None)
    budget = None if epochs is None else str(epochs)
    return [r for r in select(runs, **where) if r.overrides.get("trainer.epochs") == budget]


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


def table4_tuned(target: Target, runs: list[Run], layout: Layout) -> Table:
    """Table 4 at a reduced scale: each setting at its own best lr (see ``Tuned``), the sweep
    beside it, and the differences the paper's claim is about."""
    lrs = sorted({lr for tuned in target.tuned for lr in swept_rates(tuned, layout)})
    longer = sorted({e for tuned in target.tuned for e in tuned.longer})
    header = ["Method", *(f"lr {fmt(lr)} (seed 0)" for lr in lrs), "chosen lr"]
    header += ["test acc. (all seeds)", "− SGD"]
    for epochs in longer:
        header += [f"{epochs} epochs, test acc. (all seeds)", f"{epochs} epochs, − SGD"]
    header.append("paper (ResNet-110, CIFAR-10, 100 ep.)")
    cells: dict[str, Cell] = {}
    long_cells: dict[int, dict[str, Cell]] = {epochs: {} for epochs in longer}
    rows = []
    for tuned in target.tuned:
        mine = tuned_runs(runs, tuned)
        swept = swept_rates(tuned, layout)
        sweep = [
            cell(select(mine, optimizer__lr=lr, seed=tuned.seeds[0])).text() if lr in swept else "—"
            for lr in lrs
        ]
        lr = chosen_lr(tuned, layout)
        final = cell(select(mine, optimizer__lr=lr)) if lr is not None else None
        label = setting_name(tuned.fixed)
        if final is not None:
            cells[label] = final
        rows.append([label, *sweep, chosen_text(tuned, layout)])
        rows[-1] += [final.text() if final else "not run", ""]
        for epochs in longer:
            at_lr = select(tuned_runs(runs, tuned, epochs), optimizer__lr=lr)
            long = cell(at_lr) if lr is not None and epochs in tuned.longer else None
            if long is not None and long.mean is not None:
                long_cells[epochs][label] = long
            rows[-1] += [long.text() if long else "not run", ""]
        paper_col = str(tuned.fixed["optimizer"])
        paper = _paper(
            "table4", model="resnet110", dataset="cifar10", setting="100", column=paper_col
        )
        rows[-1].append(paper if tuned.fixed.get("optimizer.stat_batch") is None else "—")
    first = len(lrs) + 3  # the first "− SGD" column
    for offset, by_label in enumerate([cells, *long_cells.values()]):
        sgd = by_label.get("SGD")
        for row in rows:
            mine_cell = by_label.get(row[0])
            diff = difference(mine_cell, sgd) if mine_cell and sgd and row[0] != "SGD" else None
            row[first + 2 * offset] = verdict(diff)
    findings = [
        "Each method's lr is the one whose seed-0 run ended with the highest test accuracy "
        "(a sweep whose best sat on an edge got one more rate past it; '—': not swept); "
        "the final column is the mean ± sample std over every seed at that lr (seed 0 included)"
        + (
            f"; the {' and '.join(map(str, longer))}-epoch columns: every seed at that same lr, "
            "trained for longer (the lr is not tuned again)"
            if longer
            else ""
        )
        + ". Differences are ± one standard error; 'higher'/'lower' means beyond two standard "
        "errors.",
    ]
    findings += _claims(cells)
    for epochs, by_label in long_cells.items():
        findings += _claims(by_label, epochs)
    return Table(header, rows, findings)


def _claims(cells: dict[str, Cell], epochs: int | None = None) -> list[str]:
    """Whether the paper's Table 4 ordering (Eva ≈ K-FAC > SGD) holds, per statistics choice
    (``epochs``: the cells are of that longer budget); nothing is said of a comparison that
    has a cell with fewer than two seeds."""

    def lead(text: str) -> str:
        return text[:1].upper() + text[1:] if epochs is None else f"At {epochs} epochs, {text}"

    sgd = cells.get("SGD")
    out = []
    for stats in ("whole-batch", "16-sample"):
        eva = cells.get(f"Eva, {stats} statistics")
        kfac = cells.get(f"K-FAC, {stats} statistics")
        if sgd is None or eva is None or kfac is None:
            continue
        eva_sgd, kfac_sgd = difference(eva, sgd), difference(kfac, sgd)
        eva_kfac = difference(eva, kfac)
        if eva_sgd is None or kfac_sgd is None or eva_kfac is None:
            continue
        holds = (
            eva_sgd[0] > 2 * eva_sgd[1]
            and kfac_sgd[0] > 2 * kfac_sgd[1]
            and abs(eva_kfac[0]) <= max(2 * eva_kfac[1], 0.5)
        )
        out.append(
            lead(f"with {stats} statistics: ") + f"Eva − SGD {verdict(eva_sgd)}, K-FAC − SGD "
            f"{verdict(kfac_sgd)}, Eva − K-FAC {verdict(eva_kfac)}: the paper's ordering "
            f"(Eva ≈ K-FAC > SGD) {'holds' if holds else 'does not hold'} at this scale."
        )
    by_stats = [
        f"{method} {verdict(diff)}"
        for method in ("K-FAC", "Eva")
        if (whole := cells.get(f"{method}, whole-batch statistics"))
        and (authors := cells.get(f"{method}, 16-sample statistics"))
        and (diff := difference(authors, whole))
    ]
    if by_stats:
        out.append(
            lead("the statistics question, 16-sample minus whole-batch statistics (each at its ")
            + f"best lr): {', '.join(by_stats)}."
        )
    return out


def table4(target: Target, runs: list[Run], layout: Layout) -> Table:
    if target.tuned:
        return table4_tuned(target, runs, layout)
    opts = ("sgd", "kfac", "eva")
    budgets = _budget_map(target)
    header = ["Model", "Data", "Epochs", *(name(o) for o in opts)]
    header += [f"paper {name(o)}" for o in opts] + ["Eva − SGD", "Eva − K-FAC"]
    rows, wins, close, total = [], 0, 0, 0
    for model, data in _rows_of(runs):
        for epochs, paper_epochs in budgets.items():
            cells = {
                o: cell(
                    select(
                        runs,
                        model__name=model,
                        dataset__name=data,
                        optimizer__name=o,
                        trainer__epochs=epochs,
                    )
                )
                for o in opts
            }
            pm, pd = STAND_IN_MODEL.get(model, model), STAND_IN_DATA.get(data, data)
            paper = [
                _paper("table4", model=pm, dataset=pd, setting=paper_epochs, column=o) for o in opts
            ]
            m = {o: cells[o].mean for o in opts}
            gap = gap_k = "—"
            if m["eva"] is not None and m["sgd"] is not None and m["kfac"] is not None:
                total += 1
                wins += m["eva"] > m["sgd"]
                close += abs(m["eva"] - m["kfac"]) <= 1.0
                gap, gap_k = f"{m['eva'] - m['sgd']:+.2f}", f"{m['eva'] - m['kfac']:+.2f}"
            label = f"{epochs}" + (f" (≙ {paper_epochs})" if epochs != paper_epochs else "")
            rows.append(
                [
                    name(model),
                    name(data),
                    label,
                    *(cells[o].text() for o in opts),
                    *paper,
                    gap,
                    gap_k,
                ]
            )
    findings = _stand_in_note(runs)
    if total:
        findings.append(
            f"Eva > SGD in {wins} of {total} settings; |Eva − K-FAC| ≤ 1 point in {close} of "
            f"{total} (the paper: Eva ≈ K-FAC > SGD at every budget, the gap shrinking with "
            "more epochs)."
        )
    return Table(header, rows, findings)


def _seed_table(
    target: Target,
    runs: list[Run],
    columns: tuple[str, ...],
    artifact: str,
    paper_columns: tuple[str, ...],
) -> Table:
    """Rows (model, data) × columns (optimizers), mean ± std over seeds, plus the paper's."""
    header = [
        "Model",
        "Data",
        *(name(c) for c in columns),
        *(f"paper {name(c)}" for c in paper_columns),
    ]
    rows = []
    for model, data in _rows_of(runs):
        ours = [
            cell(select(runs, model__name=model, dataset__name=data, optimizer__name=c)).text()
            for c in columns
        ]
        pm, pd = STAND_IN_MODEL.get(model, model), STAND_IN_DATA.get(data, data)
        setting = "20" if artifact == "table6" else "100"
        paper = [
            _paper(artifact, model=pm, dataset=pd, setting=setting, column=c) for c in paper_columns
        ]
        rows.append([name(model), name(data), *ours, *paper])
    return Table(header, rows, _stand_in_note(runs))


def _means(runs: list[Run], columns: tuple[str, ...]) -> dict[str, float | None]:
    return {c: cell(select(runs, optimizer__name=c)).mean for c in columns}


def table7(target: Target, runs: list[Run], layout: Layout) -> Table:
    cols = ("adagrad", "adamw", "shampoo", "mfac", "eva")
    table = _seed_table(target, runs, cols, "table7", cols[:4])
    m = _means(runs, cols)
    if all(v is not None for v in m.values()):
        beats = [name(c) for c in cols[:4] if m["eva"] > m[c]]  # type: ignore[operator]
        table.findings.append(
            f"Eva beats {', '.join(beats) or 'none'} of Adagrad/AdamW/Shampoo/M-FAC here "
            "(the paper: Eva ≈ Shampoo ≈ M-FAC, above Adagrad and AdamW)."
        )
    return table


def table9(target: Target, runs: list[Run], layout: Layout) -> Table:
    cols = ("eva", "eva_no_momentum", "eva_no_klclip", "eva_no_kv")
    table = _seed_table(target, runs, cols, "table9", cols)
    m = _means(runs, cols)
    if m["eva"] is not None:
        worse = [name(c) for c in cols[1:] if m[c] is None or m[c] < m["eva"]]  # type: ignore[operator]
        table.findings.append(
            f"Removing a part lowers accuracy for: {', '.join(worse) or 'none'} (the paper: all "
            "three; without KL clipping WRN-28-10 diverged in some runs)."
        )
    return table


def table6(target: Target, runs: list[Run], layout: Layout) -> Table:
    cols = ("sgd", "kfac", "eva")
    return _seed_table(target, runs, cols, "table6", cols)


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

"""Table 4 at a reduced scale (``SCALE=cpu``): each setting (SGD; K-FAC and Eva with whole-batch
or 16-sample statistics) at its own best learning rate, the sweep it was chosen from, every
seed at that rate, the longer budgets, and whether the paper's ordering (Eva ≈ K-FAC > SGD)
holds, with each difference against its standard error."""

from __future__ import annotations

from typing import Any

from scripts.repro.records import Cell, Run, cell, difference, select, verdict
from scripts.repro.run import Layout
from scripts.repro.sweeps import Target, Tuned, fmt
from scripts.repro.table import Table, name, paper_text
from scripts.repro.tuning import chosen_lr, chosen_text, swept_rates


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


def longer_budgets(target: Target) -> list[int]:
    """The longer epoch budgets of the target's tuned settings (``Tuned.longer``), ascending."""
    return sorted({e for tuned in target.tuned for e in tuned.longer})


def table4_tuned(target: Target, runs: list[Run], layout: Layout) -> Table:
    """Table 4 at a reduced scale: each setting at its own best lr (see ``Tuned``), the sweep
    beside it, and the differences the paper's claim is about."""
    lrs = sorted({lr for tuned in target.tuned for lr in swept_rates(tuned, layout)})
    longer = longer_budgets(target)
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
        paper = paper_text(
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
    (``epochs``: the cells are of that longer budget). Nothing is said of a comparison that has
    a cell with fewer than two seeds, except that Eva − SGD alone, with K-FAC's cell not yet
    complete, already refutes the ordering when Eva is not above SGD."""

    def lead(text: str) -> str:
        return text[:1].upper() + text[1:] if epochs is None else f"At {epochs} epochs, {text}"

    sgd = cells.get("SGD")
    out = []
    for stats in ("whole-batch", "16-sample"):
        eva = cells.get(f"Eva, {stats} statistics")
        kfac = cells.get(f"K-FAC, {stats} statistics")
        eva_sgd = difference(eva, sgd) if eva and sgd else None
        if eva_sgd is None:
            continue
        kfac_sgd = difference(kfac, sgd) if kfac and sgd else None
        eva_kfac = difference(eva, kfac) if kfac else None
        if kfac_sgd is None or eva_kfac is None:
            state = (
                "is not decided until K-FAC has two seeds"
                if eva_sgd[0] > 2 * eva_sgd[1]
                else "does not hold (Eva is not above SGD)"
            )
            out.append(
                lead(f"with {stats} statistics: ") + f"Eva − SGD {verdict(eva_sgd)}, K-FAC has "
                f"fewer than two seeds so far: the paper's ordering (Eva ≈ K-FAC > SGD) {state} at "
                "this scale."
            )
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

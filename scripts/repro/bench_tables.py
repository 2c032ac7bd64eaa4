"""Tables 5, 8 and 10 from benchmark records (``<results>/bench/<job>.json``): step time and
memory relative to SGD, and throughput, beside the paper's numbers."""

from __future__ import annotations

import json
from typing import Any

from scripts.repro.records import Run, paper_numbers, paper_value
from scripts.repro.run import Layout
from scripts.repro.sweeps import Target
from scripts.repro.table import Table, name


def _bench(layout: Layout, job: str) -> dict[str, Any] | None:
    path = layout.bench / f"{job}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _ratio(algos: dict[str, Any], key: str, kind: str) -> str:
    entry = algos.get(key)
    if not entry or entry.get("error"):
        return "—"
    if kind == "time":
        value = entry.get("time_ratio_median")
    else:
        value = (entry.get("peak_memory") or {}).get("ratio")
    return f"{value:.2f}×" if isinstance(value, int | float) else "—"


def _time_pair(algos: dict[str, Any], base: str, interval: str | None) -> str:
    """``2.18× (1.02×)``: time ratio at interval 1 and (in parentheses) the larger interval."""
    one = _ratio(algos, f"{base}@1", "time")
    return one + (f" ({_ratio(algos, f'{base}@{interval}', 'time')})" if interval else "")


def _paper_time_pair(model: str, data: str, column: str) -> str:
    """The paper's ``time @1 (@interval), mem`` cell of Table 5."""
    one = paper_value("table5", model=model, dataset=data, setting="1", column=column)
    every = paper_value("table5", model=model, dataset=data, setting="interval", column=column)
    mem = paper_value("table5", model=model, dataset=data, column=column, metric="mem")
    if one is None or every is None or mem is None:
        return "—"
    return f"{one[0]:g}× ({every[0]:g}×), mem {mem[0]:g}×"


def _paper_ratio(artifact: str, model: str, data: str, column: str, metric: str) -> str:
    found = paper_value(artifact, model=model, dataset=data, column=column, metric=metric)
    return f"{found[0]:g}×" if found else "—"


def _bench_row(model: str, entry: dict[str, Any], ten: bool) -> tuple[list[str], str | None]:
    """One model's row of Table 5 (or 10) and a sentence comparing Eva with K-FAC/Shampoo."""
    algos = entry["algorithms"]
    interval = next(
        (k.split("@")[1] for k in algos if k.startswith("kfac@") and k != "kfac@1"), None
    )
    data = "imagenet" if entry.get("num_classes") == 1000 else "cifar10"
    row = [name(model), str(entry["batch"])]
    if ten:
        row += [_ratio(algos, a, k) for a in ("eva_f", "eva_s") for k in ("time", "mem")]
        row += [
            f"{_paper_ratio('table10', model, data, c, 'time')}, mem "
            f"{_paper_ratio('table10', model, data, c, 'mem')}"
            for c in ("eva_f", "eva_s")
        ]
        return row, None
    row += [_time_pair(algos, "shampoo", interval), _ratio(algos, "shampoo@1", "mem")]
    row += [_time_pair(algos, "kfac", interval), _ratio(algos, "kfac@1", "mem")]
    row += [_ratio(algos, "eva", "time"), _ratio(algos, "eva", "mem")]
    row += [_paper_time_pair(model, data, "shampoo"), _paper_time_pair(model, data, "kfac")]
    eva_mem = _paper_ratio("table5", model, data, "eva", "mem")
    row.append(f"{_paper_ratio('table5', model, data, 'eva', 'time')}, mem {eva_mem}")
    ratios = [algos.get(a, {}).get("time_ratio_median") for a in ("eva", "kfac@1", "shampoo@1")]
    if not all(ratios):
        return row, None
    eva, kfac, shampoo = ratios
    verdict = "the fastest second-order method" if eva < min(kfac, shampoo) else "not the fastest"
    return row, (
        f"{name(model)}: Eva {eva:.2f}× SGD, K-FAC@1 {kfac:.2f}×, Shampoo@1 {shampoo:.2f}× — "
        f"Eva is {verdict}."
    )


def table5(target: Target, runs: list[Run], layout: Layout) -> Table:
    ten = target.name == "table10"
    header = ["Model", "Batch"]
    if ten:
        header += ["Eva-f time", "Eva-f mem", "Eva-s time", "Eva-s mem"]
        header += ["paper Eva-f", "paper Eva-s"]
    else:
        header += ["Shampoo time @1 (@int)", "Shampoo mem", "K-FAC time @1 (@int)", "K-FAC mem"]
        header += ["Eva time", "Eva mem", "paper Shampoo", "paper K-FAC", "paper Eva"]
    rows: list[list[str]] = []
    findings: list[str] = []
    for job in target.bench:
        record = _bench(layout, job.name)
        if record is None:
            continue
        for model, entry in record["models"].items():
            row, finding = _bench_row(model, entry, ten)
            rows.append(row)
            findings += [finding] if finding else []
        machine = record["machine"]
        findings.append(
            f"`{job.name}.json`: {machine.get('device_name', '?')} {machine.get('cpu', '')}, "
            f"torch {machine.get('torch', '?')}; command `{record.get('command', '?')}`."
        )
    return Table(header, rows, findings)


def table10(target: Target, runs: list[Run], layout: Layout) -> Table:
    return table5(target, runs, layout)


def _algo_name(algo: str) -> str:
    base, _, every = algo.partition("@")
    return name(base) + (f"@{every}" if every else "")


def table8(target: Target, runs: list[Run], layout: Layout) -> Table:
    header = ["Algorithm", "Batch", "Samples/s", "× SGD", "paper batch", "paper samples/s"]
    paper = {row["column"]: row for row in paper_numbers("table8")}
    rows, findings = [], []
    sgd_rate = None
    for job in target.bench:
        record = _bench(layout, job.name)
        if record is None:
            continue
        for model, entry in record["models"].items():
            for algo, data in entry["algorithms"].items():
                if algo == "sgd" and sgd_rate is not None:
                    continue  # SGD is reported at its own (the larger) batch size only
                rate = 1000.0 * entry["batch"] / data["time_ms"]["median"]
                if algo == "sgd":
                    sgd_rate = rate
                p = paper.get(algo)
                rows.append(
                    [
                        _algo_name(algo),
                        str(entry["batch"]),
                        f"{rate:.1f}",
                        f"{rate / sgd_rate:.2f}" if sgd_rate else "—",
                        p["setting"] if p else "—",
                        p["value"] if p else "—",
                    ]
                )
            findings.append(f"`{job.name}.json` ({name(model)}): `{record.get('command', '?')}`.")
    return Table(header, rows, findings)

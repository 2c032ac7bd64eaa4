"""Write a target's outputs from its records: ``<name>.md`` (+ ``.tex`` for tables, ``.png`` and
``.pdf`` for figures) under ``<results>/<scale>/`` (``lm``: a table and a figure, under
``<results>/lm/``; see :meth:`scripts.repro.run.Layout.renders_of`).

The Markdown states what ran, at what scale, on what data, the command that regenerates it, how
many of the grid's runs finished, what could not run here, the numbers (ours beside the paper's)
and what ordering they show. Files are written atomically: a reader never sees half a table.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from harness.records import atomic_write_text
from scripts.repro import bench_tables, figures, kl_table, lm_report, plotting, tables
from scripts.repro.records import Run, load_runs
from scripts.repro.run import Layout
from scripts.repro.sweeps import Target
from scripts.repro.table import latex, markdown

TABLES = {
    builder.__name__: builder
    for builder in (tables.table4, tables.table6, tables.table7, tables.table9)
    + (bench_tables.table5, bench_tables.table8, bench_tables.table10, kl_table.kl_sweep)
}
"""The builder of each table target's :class:`~scripts.repro.table.Table` (``table*`` and
``kl_sweep``)."""
OWN_TITLES = {"lm": "Language model", "kl_sweep": "KL clip sweep"}
"""Titles of the targets that are not the paper's."""


def title(name: str) -> str:
    """``table4`` → ``Table 4``, ``fig3`` → ``Figure 3``, ``lm`` → ``Language model``."""
    if name in OWN_TITLES:
        return OWN_TITLES[name]
    kind, number = re.fullmatch(r"([a-z]+)(\d+)", name).groups()  # type: ignore[union-attr]
    return f"{'Table' if kind == 'table' else 'Figure'} {number}"


def _status_line(target: Target, runs: list[Run], layout: Layout) -> str:
    if not target.sweeps and not target.tuned and not target.bench:
        return "Nothing runs at this scale."
    if not target.sweeps and not target.tuned:
        done = sum((layout.bench / f"{job.name}.json").exists() for job in target.bench)
        return f"Benchmark records: {done} of {len(target.bench)} present under `{layout.bench}`."
    finished = sum(r.status == "completed" for r in runs)
    diverged = sum(r.status == "diverged" for r in runs)
    line = f"Runs: {finished} of {len(runs)} completed"
    if diverged:
        line += f", {diverged} diverged"
    line += f"; records under `{layout.runs}/`."
    where = Counter(" then ".join(r.devices) for r in runs if r.finished and r.devices)
    if where:
        line += " Computed on: " + ", ".join(f"{k} ({n})" for k, n in where.most_common()) + "."
    return line


def header(target: Target, runs: list[Run], layout: Layout, notes: list[str]) -> str:
    """The Markdown preamble: title, scale, what ran, command, completeness, what did not run."""
    lines = [
        f"# {title(target.name)} — {target.title} (SCALE={target.scale})",
        "",
        f"**What ran:** {target.what_ran}.",
        "",
        f"**Command:** `make {target.name} SCALE={target.scale}` "
        f"(= `python -m scripts.reproduce {target.name} --scale {target.scale}`).",
        "",
        _status_line(target, runs, layout),
    ]
    missing = [*target.not_run, *notes]
    if missing:
        lines += ["", "**Not run at this scale:**", *(f"- {m}" for m in missing)]
    return "\n".join(lines) + "\n"


def render(target: Target, layout: Layout, notes: list[str] | None = None) -> list[Path]:
    """Render one target from whatever records exist; returns the files written."""
    notes = notes or []
    runs = load_runs(target, layout)
    out = layout.renders_of(target)
    out.mkdir(parents=True, exist_ok=True)
    text = header(target, runs, layout, notes)
    written: list[Path] = []
    if target.name in TABLES:
        table = TABLES[target.name](target, runs, layout)
        text += "\n" + (markdown(table) if table.rows else "_No records yet._\n")
        findings = table.findings
        caption = f"{target.title} (SCALE={target.scale}): {target.what_ran}."
        tex = out / f"{target.name}.tex"
        atomic_write_text(tex, latex(table, caption, target.name))
        written.append(tex)
    elif target.name == "lm":
        figure, table = lm_report.build(target, runs, layout)
        text += "\n" + markdown(table)
        text += f"\n![{title(target.name)}]({target.name}.png)\n"
        written += plotting.save(figure, out, target.name)
        findings = table.findings
    else:
        paths, findings = figures.draw(target, runs, out, layout)
        written += paths
        text += f"\n![{title(target.name)}]({target.name}.png)\n"
    if findings:
        text += "\n**What the numbers show:**\n" + "".join(f"- {f}\n" for f in findings)
    if target.name not in OWN_TITLES:
        text += (
            "\nThe paper's numbers come from `scripts/repro/paper_numbers.csv` (transcribed from "
            "the paper's tables and text).\n"
        )
    md = out / f"{target.name}.md"
    atomic_write_text(md, text)
    return [md, *written]

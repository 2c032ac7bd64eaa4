"""The ``lm`` target (scripts/reproduce.py lm): its grid, the lr chosen by the lowest validation
loss, its table and figure from fabricated records, and SCALE=smoke end to end."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from harness.records import RunRecord
from scripts.repro import run as repro_run
from scripts.repro.grids import SCALES, target
from scripts.repro.render import render
from scripts.repro.run import Layout, pending
from scripts.repro.tuning import chosen_lr, swept_rates
from tests.repository import ROOT
from tests.test_repro import fabricate

ADAMW_LRS, SGD_LRS = (0.001, 0.002, 0.004), (0.03, 0.1, 0.3)
LABELS = (
    "optimizer=adamw",
    "optimizer=sgd,optimizer.weight_decay=0.0005",
    "optimizer=eva,optimizer.weight_decay=0.0005",
    "optimizer=eva_adamw",
    "optimizer=eva_adamw,optimizer.damping=1e-09",
    "optimizer=kfac,optimizer.weight_decay=0.0005",
    "optimizer=shampoo,optimizer.weight_decay=0.0005",
)


# ------------------------------------------------------------------------------------ grid


def test_lm_grid_per_scale():
    """Seven settings tuned by test loss, 2 seeds, an lr family each; renders under lm/."""
    for scale in SCALES:
        tgt = target("lm", scale)
        assert tuple(t.label for t in tgt.tuned) == LABELS
        assert all(t.metric == "test_loss" and t.minimise and t.seeds == (0, 1) for t in tgt.tuned)
        assert {t.experiment for t in tgt.tuned} == {"smoke_lm" if scale == "smoke" else "lm"}
        (job,) = tgt.bench
        assert job.script == "scripts.bench" and job.name == f"steptime-{scale}-lm"
        assert [a for a in job.args if "=" in a] == list(LABELS)
    cpu = target("lm", "cpu")
    assert [t.lrs for t in cpu.tuned] == [
        ADAMW_LRS,
        *[SGD_LRS] * 2,
        *[ADAMW_LRS] * 2,
        SGD_LRS,
        SGD_LRS,
    ]
    assert all(len(t.lrs) == 2 for t in target("lm", "smoke").tuned)
    layout = Layout(Path("r"), "cpu")
    assert layout.renders_of(cpu) == Path("r/lm")
    assert Layout(Path("r"), "paper").renders_of(target("lm", "paper")) == Path("r/lm/paper")
    assert Layout(Path("r"), "smoke").renders_of(target("lm", "smoke")) == Path("r/smoke")
    assert layout.renders_of(target("table4", "cpu")) == Path("r/cpu")


def test_lm_runs_compose(compose):
    """Every lm run of the cpu grid is a train.py config with its own settings."""
    for tuned in target("lm", "cpu").tuned:
        run = tuned.sweep().runs()[0]
        cfg = compose(["experiment=lm", *(f"{k}={v}" for k, v in run.items())])
        assert cfg.group == "lm" and cfg.model.name == "gpt"
        assert cfg.optimizer.name == run["optimizer"]
        decay = 0.1 if "adamw" in run["optimizer"] else 0.0005
        assert cfg.optimizer.base.weight_decay == decay
    smoke = compose(["experiment=smoke_lm"])
    assert smoke.group == "smoke_lm" and smoke.dataset.context <= smoke.model.kwargs.context


def test_cpu_dry_run_prints_the_sweeps_and_the_benchmark(tmp_path, capsys):
    repro_run.run_targets([target("lm", "cpu")], Layout(tmp_path, "cpu"), dry_run=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert len(lines) == 8 and "-m scripts.bench --experiment lm --steps 30" in lines[-1]
    assert "experiment=lm optimizer=adamw seed=0 optimizer.lr=0.001,0.002,0.004" in lines[0]
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------ fabricated

SWEEPS = {  # seed 0's final validation loss per lr (nan: diverged), curve before the last epoch
    LABELS[0]: ((1.60, 1.50, 1.55), (2.0, 1.7)),
    LABELS[1]: ((1.90, 1.80, math.nan), (2.2, 2.0)),
    LABELS[2]: ((1.85, 1.80, 1.80), (2.1, 1.9)),  # tie: the smaller lr
    LABELS[3]: ((1.61, 1.52, 1.56), (1.9, 1.6)),
    LABELS[4]: ((1.58, 1.49, 1.70), (1.8, 1.55)),
    LABELS[5]: ((1.95, 1.82, 1.84), (2.3, 2.0)),
    LABELS[6]: ((1.70, 1.65, 1.75), (2.0, 1.8)),
}
STEP_MS = (200.0, 180.0, 250.0, 260.0, 260.0, 400.0, 500.0)


def _record(layout, sweep, run, final: float, early: tuple[float, float]) -> None:
    """A 3-epoch run (100 steps each) ending at ``final`` (accuracy: higher at higher lr, so that
    choosing by accuracy would pick another lr); nan: a diverged run."""
    if math.isnan(final):
        record = RunRecord(layout.run_dir(sweep, run))
        record.start({}, "x", False)
        record.finish("failed", error="Diverged: training loss is nan at step 7")
        return
    acc = 0.3 + float(run["optimizer.lr"])
    rows = [
        {"epoch": e + 1, "step": 100 * (e + 1), "test_loss": v, "test_bpb": v / math.log(2)}
        for e, v in enumerate((*early, final))
    ]
    summary = {"test_loss": final, "test_bpb": final / math.log(2), "test_acc": acc}
    fabricate(layout, sweep, run, summary, rows, config=run)


def _fabricate_all(layout: Layout) -> None:
    tgt = target("lm", layout.scale)
    for tuned in tgt.tuned:
        losses, early = SWEEPS[tuned.label]
        sweep = tuned.sweep()
        for run, loss in zip(sweep.runs(), losses, strict=True):
            _record(layout, sweep, run, loss, early)
        lr = chosen_lr(tuned, layout)
        best = losses[tuned.lrs.index(lr)]
        for run in tuned.final(lr).runs():  # seed 1 ends 0.02 higher
            _record(layout, tuned.final(lr), run, best + 0.02 * int(run["seed"]), early)
    algorithms = {
        label: {"time_ms": {"mean": ms, "median": ms}} for label, ms in zip(LABELS, STEP_MS)
    }
    layout.bench.mkdir(parents=True, exist_ok=True)
    record = {"models": {"gpt": {"algorithms": algorithms}}}
    (layout.bench / "steptime-cpu-lm.json").write_text(json.dumps(record))


def test_lr_is_chosen_by_the_lowest_validation_loss(tmp_path):
    """Not by accuracy (highest at the largest lr here); diverged ranks last; ties: smaller lr;
    nothing until the whole sweep finished."""
    layout = Layout(tmp_path, "cpu")
    tgt = target("lm", "cpu")
    adamw = tgt.tuned[0]
    sweep = adamw.sweep()
    _record(layout, sweep, sweep.runs()[0], 1.6, (2.0, 1.7))
    assert chosen_lr(adamw, layout) is None
    _fabricate_all(layout)
    assert [chosen_lr(t, layout) for t in tgt.tuned] == [0.002, 0.1, 0.1, 0.002, 0.002, 0.1, 0.1]
    assert not pending(tgt, layout)


def test_table_and_figure_from_fabricated_records(tmp_path):
    layout = Layout(tmp_path, "cpu")
    _fabricate_all(layout)
    written = render(target("lm", "cpu"), layout)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "lm/lm.md",
        "lm/lm.png",
        "lm/lm.pdf",
    ]
    assert all(p.stat().st_size > 1000 for p in written[1:])
    md = written[0].read_text()
    assert md.startswith("# Language model — Byte-level GPT")
    assert "Runs: 27 of 28 completed, 1 diverged" in md
    # AdamW: 1.50 and 1.52 → 1.510 ± 0.014 nats, 2.178 ± 0.020 bits; target 1.83 (K-FAC's)
    rows = [
        "| AdamW | 0.001: 1.600 · 0.002: 1.500 · 0.004: 1.550 | 0.002 | 1.510 ± 0.014 | "
        "2.178 ± 0.020 | — | step 200, 40 s | 1.00× (200.0 ms) |",
        "| SGD | 0.03: 1.900 · 0.1: 1.800 · 0.3: diverged | 0.1 | 1.810 ± 0.014 | 2.611 ± 0.020 "
        "| +0.30 ± 0.01 (higher) | step 300, 54 s | 0.90× (180.0 ms) |",
        "| Eva (on SGD) | 0.03: 1.850 · 0.1: 1.800 · 0.3: 1.800 | 0.1 | 1.810 ± 0.014 |",
        "| Eva (on AdamW), damping 1e-09 | 0.001: 1.580 · 0.002: 1.490 · 0.004: 1.700 | 0.002 | "
        "1.500 ± 0.014 | 2.164 ± 0.020 | -0.01 ± 0.01 (no difference) | step 100, 26 s | "
        "1.30× (260.0 ms) |",
        "| K-FAC | 0.03: 1.950 · 0.1: 1.820 · 0.3: 1.840 | 0.1 | 1.830 ± 0.014 | 2.640 ± 0.020 "
        "| +0.32 ± 0.01 (higher) | step 300, 120 s | 2.00× (400.0 ms) |",
        "| Shampoo | 0.03: 1.700 · 0.1: 1.650 · 0.3: 1.750 | 0.1 | 1.660 ± 0.014 | 2.395 ± 0.020 "
        "| +0.15 ± 0.01 (higher) | step 200, 100 s | 2.50× (500.0 ms) |",
    ]
    for row in rows:
        assert row in md, row
    assert "Lowest final validation loss: Eva (on AdamW), damping 1e-09 (1.500 nats/byte" in md
    assert "Target 1.830 nats/byte" in md
    assert "paper_numbers.csv" not in md


def test_missing_step_time_record_is_said(tmp_path):
    layout = Layout(tmp_path, "cpu")
    _fabricate_all(layout)
    (layout.bench / "steptime-cpu-lm.json").write_text("{not json")
    md = render(target("lm", "cpu"), layout)[0].read_text()
    assert "Step-time record `steptime-cpu-lm.json` is unreadable (JSONDecodeError" in md
    assert "| step 200 | — |" in md  # AdamW: steps to target, no seconds, no ratio


# ---------------------------------------------------------------------------- end to end


def test_lm_smoke_scale_runs_and_renders_end_to_end(tmp_path):
    """SCALE=smoke, two runs at a time: every setting's sweep, its second seed, the step-time
    benchmark and the render; a rerun only re-renders."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "scripts.reproduce", "lm", "--scale", "smoke", "--jobs", "2"]
    command += ["--results", str(tmp_path), "-o", "logger.wandb=false"]
    start = time.monotonic()
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    print(f"smoke lm: {time.monotonic() - start:.0f} s")
    layout = Layout(tmp_path, "smoke")
    assert not pending(target("lm", "smoke"), layout)
    record = json.loads((layout.bench / "steptime-smoke-lm.json").read_text())
    assert set(record["models"]["gpt"]["algorithms"]) == set(LABELS)
    md = (tmp_path / "smoke" / "lm.md").read_text()
    # every setting: its sweep (with a rate past an edge its best sat on), then its second seed
    tuned = target("lm", "smoke").tuned
    runs = sum(len(swept_rates(t, layout)) + len(t.seeds) - 1 for t in tuned)
    assert runs >= 21
    counted = re.search(r"Runs: (\d+) of (\d+) completed(?:, (\d+) diverged)?", md)
    assert counted is not None and int(counted[2]) == runs
    assert int(counted[1]) + int(counted[3] or 0) == runs
    assert (tmp_path / "smoke" / "lm.png").exists()
    assert "sweep unfinished" not in md and "not run |" not in md
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "$ python" not in again.stdout and "[pool]" not in again.stdout

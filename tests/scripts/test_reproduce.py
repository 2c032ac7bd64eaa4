"""``python -m scripts.reproduce``: one-line errors, and SCALE=smoke end to end for every target."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

from scripts.repro.run import Layout, pending
from scripts.repro.targets import TARGETS, target
from scripts.repro.tuning import swept_rates
from tests.repository import ROOT
from tests.scripts.repro.fabricate import LABELS


def test_unknown_target_or_scale_is_one_line():
    for args in (["table11"], ["table4", "--scale", "huge"]):
        proc = subprocess.run(
            [sys.executable, "-m", "scripts.reproduce", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:")


def test_smoke_scale_runs_and_renders_every_target(tmp_path):
    """SCALE=smoke: every target trains (or benchmarks) and renders; a rerun only re-renders."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "scripts.reproduce", "all", "--scale", "smoke"]
    command += ["--results", str(tmp_path), "-o", "logger.wandb=false"]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    layout = Layout(tmp_path, "smoke")
    for name in TARGETS:
        tgt = target(name, "smoke")
        assert not pending(tgt, layout), name
        assert (layout.renders / f"{name}.md").exists()
        assert (
            layout.renders / (f"{name}.tex" if name.startswith("table") else f"{name}.png")
        ).exists()
        assert "not run" not in (layout.renders / f"{name}.md").read_text().split("**What ran")[0]
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "$ python" not in again.stdout


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

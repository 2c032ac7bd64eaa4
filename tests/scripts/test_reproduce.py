"""``python -m scripts.reproduce``: one-line errors, and SCALE=smoke end to end for every target.

The ``lm`` target trains once per module (:func:`smoke_lm`, two runs at a time): its test checks
those runs, and the every-target run starts from a copy of them (it re-renders ``lm`` and trains
every paper target), so that ``lm``'s 21 runs are not trained twice."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def reproduce(*args: str, results: Path) -> list[str]:
    """The ``python -m scripts.reproduce`` command line, W&B off, into ``results``."""
    command = [sys.executable, "-m", "scripts.reproduce", *args]
    return command + ["--results", str(results), "-o", "logger.wandb=false"]


@pytest.fixture(scope="module")
def smoke_lm(tmp_path_factory) -> tuple[Path, list[str], subprocess.CompletedProcess[str]]:
    """``lm`` at SCALE=smoke with two runs at a time, once per module: (results folder, the
    command, its first call)."""
    results = tmp_path_factory.mktemp("smoke-lm")
    command = reproduce("lm", "--scale", "smoke", "--jobs", "2", results=results)
    start = time.monotonic()
    first = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    print(f"smoke lm: {time.monotonic() - start:.0f} s")
    return results, command, first


def test_smoke_scale_runs_and_renders_every_target(tmp_path, smoke_lm):
    """SCALE=smoke: every target trains (or benchmarks) and renders; a rerun only re-renders.
    ``lm``'s runs and benchmark record are :func:`smoke_lm`'s (copied in: trained and checked
    by the lm test), so ``all`` trains the paper targets and renders every one, ``lm`` too."""
    lm_results, _, lm_first = smoke_lm
    assert lm_first.returncode == 0, lm_first.stdout[-3000:] + lm_first.stderr[-3000:]
    lm_layout, layout = Layout(lm_results, "smoke"), Layout(tmp_path, "smoke")
    group = target("lm", "smoke").tuned[0].sweep().group
    shutil.copytree(lm_layout.runs / group, layout.runs / group)
    layout.bench.mkdir(parents=True)
    for job in target("lm", "smoke").bench:
        shutil.copy2(lm_layout.bench / f"{job.name}.json", layout.bench)
    command = reproduce("all", "--scale", "smoke", results=tmp_path)
    first = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "experiment=lm " not in first.stdout  # lm: nothing left to run
    for name in TARGETS:
        tgt = target(name, "smoke")
        assert not pending(tgt, layout), name
        assert (layout.renders / f"{name}.md").exists()
        assert (
            layout.renders / (f"{name}.tex" if name.startswith("table") else f"{name}.png")
        ).exists()
        assert "not run" not in (layout.renders / f"{name}.md").read_text().split("**What ran")[0]
    again = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "$ python" not in again.stdout


def test_lm_smoke_scale_runs_and_renders_end_to_end(smoke_lm):
    """SCALE=smoke, two runs at a time: every setting's sweep, its second seed, the step-time
    benchmark and the render; a rerun only re-renders."""
    results, command, first = smoke_lm
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    layout = Layout(results, "smoke")
    assert not pending(target("lm", "smoke"), layout)
    record = json.loads((layout.bench / "steptime-smoke-lm.json").read_text())
    assert set(record["models"]["gpt"]["algorithms"]) == set(LABELS)
    md = (results / "smoke" / "lm.md").read_text()
    # every setting: its sweep (with a rate past an edge its best sat on), then its second seed
    tuned = target("lm", "smoke").tuned
    runs = sum(len(swept_rates(t, layout)) + len(t.seeds) - 1 for t in tuned)
    assert runs >= 21
    counted = re.search(r"Runs: (\d+) of (\d+) completed(?:, (\d+) diverged)?", md)
    assert counted is not None and int(counted[2]) == runs
    assert int(counted[1]) + int(counted[3] or 0) == runs
    assert (results / "smoke" / "lm.png").exists()
    assert "sweep unfinished" not in md and "not run |" not in md
    again = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "$ python" not in again.stdout and "[pool]" not in again.stdout

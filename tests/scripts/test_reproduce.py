"""``python -m scripts.reproduce``: one-line errors, and SCALE=smoke end to end for every target
(the paper's in three groups, :data:`GROUPS`; ``lm`` on its own, two runs at a time)."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.repro.render import TABLES
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


def test_all_names_every_target(tmp_path):
    """``all`` is every target: a dry run prints the first sweeps of each, the paper's and ours."""
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.reproduce", "all", "--scale", "smoke", "--dry-run"]
        + ["--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    for group in ("experiment=cifar ", "experiment=autoencoder ", "experiment=lm ", "kl_clip="):
        assert group in proc.stdout, group
    assert "--name steptime-smoke\n" in proc.stdout and "--name steptime-smoke-lm\n" in proc.stdout


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def reproduce(*args: str, results: Path) -> list[str]:
    """The ``python -m scripts.reproduce`` command line, W&B off, into ``results``."""
    command = [sys.executable, "-m", "scripts.reproduce", *args]
    return command + ["--results", str(results), "-o", "logger.wandb=false"]


GROUPS = {
    "table4": ("table4", "table9", "fig3", "fig5", "fig8", "kl_sweep"),
    "ablations": ("table6", "table7", "fig7"),
    "rest": ("fig4", "fig6", "table5", "table8", "table10"),
}
"""The paper's targets in three groups that share no run (a target's renders read runs of its own
group only), each trained in its own test so that pytest's two workers share them; ``lm`` is
:func:`test_lm_smoke_scale_runs_and_renders_end_to_end`'s."""


def smoke_run_dirs(name: str) -> set[Path]:
    """The run directories of a target's sweeps and learning-rate sweeps at SCALE=smoke."""
    tgt, layout = target(name, "smoke"), Layout(Path("results"), "smoke")
    sweeps = [*tgt.sweeps, *(t.sweep() for t in tgt.tuned)]
    return {layout.run_dir(sweep, run) for sweep in sweeps for run in sweep.runs()}


def test_groups_cover_every_target_and_share_no_run():
    names = [name for group in GROUPS.values() for name in group]
    assert sorted(names) == sorted(set(TARGETS) - {"lm"})
    runs = {key: set().union(*map(smoke_run_dirs, group)) for key, group in GROUPS.items()}
    for a, b in itertools.combinations(runs, 2):
        assert not runs[a] & runs[b], (a, b)


@pytest.mark.long
@pytest.mark.parametrize("group", GROUPS)
def test_smoke_scale_runs_and_renders_every_target(tmp_path, group):
    """SCALE=smoke: every target of the group trains (or benchmarks) and renders; a rerun only
    re-renders."""
    layout = Layout(tmp_path, "smoke")
    command = reproduce(*GROUPS[group], "--scale", "smoke", results=tmp_path)
    first = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for name in GROUPS[group]:
        tgt = target(name, "smoke")
        assert not pending(tgt, layout), name
        assert (layout.renders / f"{name}.md").exists()
        assert (layout.renders / (f"{name}.tex" if name in TABLES else f"{name}.png")).exists()
        assert "not run" not in (layout.renders / f"{name}.md").read_text().split("**What ran")[0]
    again = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "$ python" not in again.stdout


@pytest.mark.long
def test_lm_smoke_scale_runs_and_renders_end_to_end(tmp_path):
    """SCALE=smoke, two runs at a time: every setting's sweep, its second seed, the step-time
    benchmark and the render; a rerun only re-renders."""
    results = tmp_path
    command = reproduce("lm", "--scale", "smoke", "--jobs", "2", results=results)
    first = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
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

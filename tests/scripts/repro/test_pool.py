"""``reproduce.py --jobs N`` / ``--time-limit``: runs side by side (scripts/repro/pool.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from harness.records import RunRecord, finished_run
from scripts.repro import pool as repro_pool
from scripts.repro.run import Layout
from scripts.repro.targets import target
from scripts.repro.tuning import chosen_lr
from tests.repository import ROOT


class Finished:
    """Stands in for a run's process that has already ended."""

    pid = -1
    returncode = 0

    def poll(self) -> int:
        return 0


def test_final_seeds_wait_for_their_sweep_and_start_first(tmp_path, monkeypatch):
    """Every sweep run starts before its setting's finals, and so does the rate past the edge
    the sweep's best sat on (0.025 here; Table 4's settings given one extension, as at the cpu
    scale); the finals (and every seed at a longer budget, given one here) run at the chosen lr
    and jump the queue, first seeds first; runs shared by targets start once; first seeds come
    before second seeds."""
    layout = Layout(tmp_path, "smoke")
    targets = [target(name, "smoke") for name in ("table4", "fig8", "fig3", "table9")]
    extended = tuple(replace(tuned, extend=1, longer=(2,)) for tuned in targets[0].tuned)
    targets[0] = replace(targets[0], tuned=extended)
    started: list[dict[str, str]] = []

    def launch(self, job):
        started.append(job.run)
        record = RunRecord(layout.run_dir(job.sweep, job.run))
        record.start({}, "fake", False)
        lr = float(job.run.get("optimizer.lr", 0.1))
        record.finish("completed", summary={"test_acc": 0.5 + (0.1 if lr == 0.05 else 0.0)})
        return Finished()

    monkeypatch.setattr(repro_pool.RunPool, "launch", launch)
    monkeypatch.setattr(repro_pool.time, "sleep", lambda seconds: None)
    failures = repro_pool.RunPool(layout, targets, False, [], 1, 2, None, {}).run()
    assert failures == []
    keys = [tuple(sorted(run.items())) for run in started]
    assert len(keys) == len(set(keys))  # FOOF (Figs. 3 and 8) and Eva (Tables 4 and 9) once
    for tuned in targets[0].tuned:
        assert chosen_lr(tuned, layout) == 0.05
        final = tuned.final(0.05).runs()
        sweep = tuned.sweep().runs()
        assert max(started.index(r) for r in sweep) < min(started.index(r) for r in final)
        extension = tuned.sweep((0.025,)).runs()[0]
        assert started.index(extension) < min(started.index(r) for r in final)
    finals = [r for t in targets[0].tuned for s in t.finals(0.05) for r in s.runs()]
    assert len(finals) == 5 * 3 and all(r["optimizer.lr"] == "0.05" for r in finals)
    assert sum(r.get("trainer.epochs") == "2" for r in finals) == 5 * 2
    for tuned in targets[0].tuned:  # released together: lower seeds first
        order = sorted(started.index(r) for s in tuned.finals(0.05) for r in s.runs())
        assert [started[i]["seed"] for i in order] == ["0", "1", "1"]
    statics = [r for r in started if r["optimizer"] in ("eva_f", "eva_s", "foof_rank1")]
    # finals jump the queue: all of them start before the first static run queued ahead of them
    assert max(started.index(r) for r in finals) < started.index(statics[0])
    assert [r["seed"] for r in statics] == ["0", "0", "0", "1", "1", "1"]
    for tgt in targets:
        for sweep in tgt.sweeps:
            assert all(finished_run(layout.run_dir(sweep, r)) for r in sweep.runs())


def test_time_limit_stops_runs_and_says_what_is_left(tmp_path, monkeypatch):
    """After the limit nothing starts, running runs are stopped (their process groups end), and
    every unfinished run is named; nothing is marked finished."""
    layout = Layout(tmp_path, "smoke")
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    monkeypatch.setattr(repro_pool, "sweep_command", lambda *args, **kwargs: sleeper)
    pool = repro_pool.RunPool(layout, [target("fig3", "smoke")], False, [], 1, 2, 1.5, {})
    began = time.monotonic()
    failures = pool.run()
    assert time.monotonic() - began < 30
    assert sum("(stopped: time limit)" in f for f in failures) == 2
    assert sum("(not started: time limit)" in f for f in failures) == 2
    for line in failures:
        assert line.startswith("smoke_cifar_cosine/")  # fig3 at smoke: experiment=cifar_cosine
    gone = subprocess.run(["pgrep", "-f", "time.sleep\\(120\\)"], capture_output=True)
    assert gone.returncode == 1, gone.stdout  # no sleeper left running


def test_sigterm_stops_the_runs_too(tmp_path):
    """Killing the pool's process (SIGTERM, as a scheduler or `kill` does) ends its runs, which
    live in process groups of their own."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "from scripts.repro import pool\n"
        "from scripts.repro.targets import target\n"
        "from scripts.repro.run import Layout\n"
        "sleeper = [sys.executable, '-c', 'import time; time.sleep(121)']\n"
        "pool.sweep_command = lambda *args, **kwargs: sleeper\n"
        "pool.stop_on_sigterm()\n"
        f"layout = Layout(Path({str(tmp_path)!r}), 'smoke')\n"
        "pool.RunPool(layout, [target('fig3', 'smoke')], False, [], 1, 2, None, {}).run()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(driver)],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    assert "[pool] start" in proc.stdout.readline()
    time.sleep(1.0)
    proc.terminate()
    assert proc.wait(timeout=30) == 143
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", "time.sleep\\(121\\)"], capture_output=True)
    assert left.returncode == 1, left.stdout  # no run outlived the pool


@pytest.mark.long
def test_jobs_run_side_by_side_end_to_end(tmp_path):
    """The command line: Fig. 3 at SCALE=smoke with two runs at a time; records, per-run logs,
    the rendered figure; a second call has nothing left to run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "scripts.reproduce", "fig3", "--scale", "smoke", "--jobs", "2"]
    command += ["--results", str(tmp_path), "-o", "logger.wandb=false"]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stdout.count("[pool] completed:") == 4
    layout = Layout(tmp_path, "smoke")
    sweep = target("fig3", "smoke").sweeps[0]
    for run in sweep.runs():
        run_dir = layout.run_dir(sweep, run)
        assert RunRecord(run_dir).data["status"] == "completed"
        assert (run_dir / "output.log").stat().st_size > 0
    assert (layout.renders / "fig3.png").exists()
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "[pool] start" not in again.stdout

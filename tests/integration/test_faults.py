"""A worker that dies or hangs mid-training makes the other one exit, non-zero, within
``trainer.dist_timeout_s`` (2 workers, gloo, CPU, the synthetic
autoencoder of tests/integration/launch.py).

The failure is injected with ``EVA_FAULT_AT_STEP=RANK:STEP[:MODE]`` (harness/distributed.py):
worker 1 exits abruptly (``exit``: ``os._exit``, its sockets close) or freezes (``stop``:
``SIGSTOP``, its sockets stay open, as a hung machine) right after its 6th step (in epoch 2).

- Launched directly with ``env://`` rendezvous (MASTER_ADDR/PORT, RANK, WORLD_SIZE): no agent
  watches the workers, so the survivor must notice by itself. A closed connection fails its next
  collective at once; a frozen peer only through the process group's timeout, which is the real
  test of ``dist_timeout_s``.
- Under ``torchrun``, whose agent stops the survivor and names the failed worker.

Times are measured from the moment the faulty worker is seen dead (or stopped), so start-up
time on a busy machine does not count.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.distributed import FAULT_ENV, FAULT_EXIT_CODE
from tests.integration.launch import ARGS, clean_env, free_port, torchrun_command
from tests.repository import ROOT

TIMEOUT_S = 10
"""trainer.dist_timeout_s in these runs. It also bounds the rendezvous, so it leaves room for
the two workers to start at different speeds on a loaded machine."""
MARGIN_S = 15
"""Time the survivor may take after the timeout: raising, writing its record, exiting."""
COMMON = [*ARGS, "trainer.epochs=50", "optimizer=eva", f"trainer.dist_timeout_s={TIMEOUT_S}"]

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="needs /proc to see a stopped process"
)


def _state(pid: int) -> str:
    """The process state letter from ``/proc/<pid>/stat`` (``T``: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def _wait_for(condition, what: str, limit_s: float = 240) -> float:
    """Poll ``condition`` until it holds; return the time it was seen to."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {limit_s} s")
        time.sleep(0.05)
    return time.monotonic()


def _launch_direct(tmp_path: Path, fault: str) -> tuple[subprocess.Popen, subprocess.Popen]:
    """Workers 0 and 1 of a 2-worker run, started as plain processes with env:// rendezvous."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = clean_env() | {
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", FAULT_ENV: fault,
        }  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, "train.py", *COMMON, f"out_root={tmp_path}"],
                cwd=ROOT,
                env=env,
                stdout=(tmp_path / f"rank{rank}.out").open("w"),
                stderr=(tmp_path / f"rank{rank}.err").open("w"),
            )
        )
    return procs[0], procs[1]


def _survive(tmp_path: Path, mode: str) -> tuple[float, subprocess.Popen, subprocess.Popen]:
    """Run with worker 1 failing in ``mode``; return the survivor's seconds from the failure to
    its exit, and both processes (ended)."""
    survivor, faulty = _launch_direct(tmp_path, f"1:6:{mode}")
    try:
        if mode == "exit":
            failed = _wait_for(lambda: faulty.poll() is not None, "worker 1's exit")
        else:
            failed = _wait_for(lambda: _state(faulty.pid) == "T", "worker 1's stop")
        try:
            survivor.wait(timeout=TIMEOUT_S + MARGIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker 0 still runs {TIMEOUT_S + MARGIN_S} s after worker 1 failed")
        return time.monotonic() - failed, survivor, faulty
    finally:
        for proc in (survivor, faulty):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _check_survivor(tmp_path: Path, survivor: subprocess.Popen, message: str) -> None:
    """Exit status 1 (an error, not a signal), one line on stderr naming the collective's error
    and no traceback, and the run's record (rank 0 writes it) marked failed with that error."""
    assert survivor.returncode == 1
    stderr = (tmp_path / "rank0.err").read_text()
    errors = [line for line in stderr.splitlines() if re.search(message, line)]
    assert len(errors) == 1, stderr[-3000:]
    assert errors[0].startswith("error: lost contact with another worker ("), errors[0]
    assert "Traceback" not in stderr, stderr[-3000:]
    record = json.loads(next(tmp_path.rglob("record.json")).read_text())
    assert record["status"] == "failed"
    assert re.search(message, record["error"]), record["error"]


def test_dead_worker_fails_the_survivor_at_once(tmp_path: Path) -> None:
    elapsed, survivor, faulty = _survive(tmp_path, "exit")
    assert faulty.returncode == FAULT_EXIT_CODE
    assert "fails (exit) after step 6" in (tmp_path / "rank1.out").read_text()
    # a closed connection is noticed at the next collective, long before the timeout
    assert elapsed < TIMEOUT_S, elapsed
    _check_survivor(tmp_path, survivor, r"Connection (closed|reset) by peer")


def test_hung_worker_fails_the_survivor_after_the_timeout(tmp_path: Path) -> None:
    elapsed, survivor, faulty = _survive(tmp_path, "stop")
    assert faulty.returncode == -signal.SIGKILL  # it was still frozen: the test killed it
    # nothing but the process group's timeout can tell the survivor that its peer is gone
    assert TIMEOUT_S - 1 <= elapsed <= TIMEOUT_S + MARGIN_S, elapsed
    _check_survivor(tmp_path, survivor, rf"Timed out waiting {TIMEOUT_S * 1000}ms")


def test_torchrun_stops_the_job_when_a_worker_dies(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*torchrun_command(), *COMMON, f"out_root={tmp_path}"],
        cwd=ROOT,
        env=clean_env() | {FAULT_ENV: "1:6"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    # the agent's report names the worker that failed first and its exit status
    root_cause = proc.stderr.split("Root Cause", 1)[-1]
    assert re.search(r"rank\s*: 1 ", root_cause), proc.stderr[-3000:]
    assert re.search(rf"exitcode\s*: {FAULT_EXIT_CODE} ", root_cause), proc.stderr[-3000:]
    # worker 0 ended without completing the run (it fails or the agent stops it, whichever is
    # first; so no record status is asserted)
    assert "done: run" not in proc.stdout

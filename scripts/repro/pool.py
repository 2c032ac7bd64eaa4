"""Run many small training runs side by side (``scripts/reproduce.py --jobs N``).

Every run of the targets becomes one ``train.py -m`` process with a single job, so it lands in
the same directory and record as in a sweep. Up to ``jobs`` run at a time; learning-rate sweeps
of tuned settings start first, and a setting's final seeds (or the rate its sweep adds past an
edge) are queued ahead of everything else as soon as its sweep has finished. Runs that several
targets share run once.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.records import finished_run
from scripts.repro.run import ROOT, Layout, sweep_command
from scripts.repro.sweeps import Sweep, Target, Tuned
from scripts.repro.tuning import chosen_lr, current_sweep


def stop_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so that :meth:`RunPool.run` stops its runs (which have
    their own process groups and would otherwise outlive it) before the process ends."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@dataclass(frozen=True)
class Job:
    """One run: the sweep it belongs to and its overrides."""

    sweep: Sweep
    run: dict[str, str]

    def single(self) -> Sweep:
        """A sweep of this run alone (its overrides all fixed)."""
        return Sweep(self.sweep.experiment, {}, dict(self.run), self.sweep.scale)


def _seed(job: Job) -> int:
    """The order jobs start in: lower seeds first (a time limit then cuts seeds, not settings)."""
    return int(job.run.get("seed", 0))


class RunPool:
    """Queue, launch and watch the runs of some targets (see the module docstring)."""

    def __init__(
        self,
        layout: Layout,
        targets: Sequence[Target],
        force: bool,
        extra: Sequence[str],
        nproc: int,
        jobs: int,
        time_limit: float | None,
        env: dict[str, str],
        only: Sequence[str] = (),
    ) -> None:
        self.layout, self.force, self.extra, self.nproc = layout, force, list(extra), nproc
        self.only = list(only)
        self.jobs, self.time_limit, self.env = jobs, time_limit, env
        self.queue: list[Job] = []
        self.seen: set[Path] = set()
        self.pending: set[Path] = set()  # queued or running
        self.waiting: list[Tuned] = []
        for target in targets:
            for tuned in target.tuned:
                if tuned not in self.waiting:
                    self.waiting.append(tuned)
                self._add(current_sweep(tuned, layout))
        for target in targets:
            for sweep in target.sweeps:
                self._add(sweep)
        # Every setting's first seed before any setting's second: a time limit then cuts seeds,
        # not whole settings (stable: the lr sweeps stay ahead among the first seeds).
        self.queue.sort(key=_seed)

    def _add(self, sweep: Sweep, front: bool = False) -> None:
        self._queue(self._new_jobs(sweep), front)

    def _queue(self, new: list[Job], front: bool) -> None:
        self.queue = new + self.queue if front else self.queue + new

    def _new_jobs(self, sweep: Sweep) -> list[Job]:
        new = []
        for run in sweep.runs():
            path = self.layout.run_dir(sweep, run)
            if path in self.seen:
                continue
            self.seen.add(path)
            if self.only and not any(fnmatch.fnmatch(path.name, p) for p in self.only):
                continue
            if self.force or finished_run(path) is None:
                new.append(Job(sweep, run))
                self.pending.add(path)
        return new

    def _release_finals(self) -> None:
        released: list[Job] = []
        for tuned in list(self.waiting):
            sweep = current_sweep(tuned, self.layout)
            self._add(sweep, front=True)  # a rate past an edge the finished sweep's best sat on
            if any(self.layout.run_dir(sweep, r) in self.pending for r in sweep.runs()):
                continue
            lr = chosen_lr(tuned, self.layout)
            if lr is not None:
                self.waiting.remove(tuned)
                released += [job for final in tuned.finals(lr) for job in self._new_jobs(final)]
        # ahead of the queue, lower seeds first (as at the start: a time limit cuts seeds)
        self._queue(sorted(released, key=_seed), front=True)

    def run(self) -> list[str]:
        """Run everything queued; returns a line per run that did not finish."""
        start = time.monotonic()
        running: dict[subprocess.Popen[bytes], tuple[Job, float]] = {}
        failures: list[str] = []
        self._release_finals()
        try:
            self._loop(start, running, failures)
        except BaseException:  # Ctrl-C, SIGTERM (as SystemExit): the runs have their own sessions
            self._stop(running)
            raise
        for tuned in self.waiting:
            failures.append(f"{tuned.label}: final seeds not run (lr sweep unfinished)")
        return failures

    def _loop(
        self,
        start: float,
        running: dict[subprocess.Popen[bytes], tuple[Job, float]],
        failures: list[str],
    ) -> None:
        while self.queue or running:
            out_of_time = self.time_limit is not None and time.monotonic() - start > self.time_limit
            if out_of_time:
                failures += self._stop(running)
                failures += [f"{self._name(job)} (not started: time limit)" for job in self.queue]
                running.clear()
                return
            while self.queue and len(running) < self.jobs:
                job = self.queue.pop(0)
                running[self.launch(job)] = (job, time.monotonic())
            time.sleep(1.0)
            for proc in [p for p in running if p.poll() is not None]:
                job, began = running.pop(proc)
                path = self._dir(job)
                self.pending.discard(path)
                done = finished_run(path)
                status = done["status"] if done else f"exit {proc.returncode}, not finished"
                print(f"[pool] {status}: {self._name(job)} ({time.monotonic() - began:.0f} s)")
                if done is None:
                    failures.append(f"{self._name(job)} ({status}; see {path}/output.log)")
                self._release_finals()

    def _dir(self, job: Job) -> Path:
        return self.layout.run_dir(job.sweep, job.run)

    def _name(self, job: Job) -> str:
        return f"{job.sweep.group}/{self._dir(job).name}"

    def launch(self, job: Job) -> subprocess.Popen[bytes]:
        """Start one run in the background (its output to ``output.log`` in its folder); the
        tests replace it with a fake run."""
        path = self._dir(job)
        path.mkdir(parents=True, exist_ok=True)
        command = sweep_command(job.single(), self.layout, self.extra, self.force, self.nproc)
        print(f"[pool] start: {self._name(job)}", flush=True)
        with (path / "output.log").open("wb") as log:
            return subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _stop(self, running: dict[subprocess.Popen[bytes], tuple[Job, float]]) -> list[str]:
        """Stop every running run (SIGTERM to its process group, then SIGKILL)."""
        for proc in running:
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait()
        return [f"{self._name(job)} (stopped: time limit)" for job, _ in running.values()]


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to a run's process group (it may have ended already)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass

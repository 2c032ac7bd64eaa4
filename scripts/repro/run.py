"""Run what a target needs that has no finished record yet: Hydra multiruns and benchmark calls.

Runs land in ``<results>/runs/<scale>/<group>/<override_dirname>/`` (``record.json``,
``metrics.jsonl``, a checkpoint). A run is *finished* when its record says ``completed`` or it
diverged (``harness.records.finished_run``); a sweep with every run finished is not launched
again, and a launched sweep skips its finished runs (``skip_completed=true``) and resumes killed
ones from their checkpoints (``resume=true``). ``force`` reruns everything from scratch.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.records import finished_run
from scripts.repro.sweeps import Sweep, Target, merge_sweeps, run_dirname
from scripts.repro.tuning import chosen_lr, current_sweep

ROOT = Path(__file__).resolve().parents[2]

EXCLUDE_KEYS = (
    "experiment",
    "scale",
    "out_root",
    "skip_completed",
    "resume",
    "trainer.progress",
    "trainer.device",
    "logger.wandb",
    "logger.mode",
    "dataset.root",
    "dataset.tarball",
    "hydra/launcher",
)
"""Overrides that say where or how a run executes, not what it is: left out of its directory."""


@dataclass(frozen=True)
class Layout:
    """Where a scale's runs, benchmark records and renders live under the results folder."""

    results: Path
    scale: str

    @property
    def runs(self) -> Path:
        return self.results / "runs" / self.scale

    @property
    def bench(self) -> Path:
        return self.results / "bench" if self.scale != "smoke" else self.results / "smoke" / "bench"

    @property
    def renders(self) -> Path:
        return self.results / self.scale

    def renders_of(self, target: Target) -> Path:
        """Where a target's renders go: its own folder if it names one (``lm``: ``lm/``), else
        :attr:`renders`."""
        return self.results / target.renders if target.renders else self.renders

    def run_dir(self, sweep: Sweep, run: dict[str, str]) -> Path:
        # train.py records a run under its config's ``group`` (tests/scripts/repro/test_grids.py
        # checks that Sweep.group is that group).
        return self.runs / sweep.group / run_dirname(run)


def cifar10_images_overrides() -> list[str] | None:
    """Where the CIFAR-10 JPEG copy comes from: ``[]`` if unpacked already, the tarball's
    override if one is found, None if neither (then CIFAR-10 runs cannot run here).

    Looks at ``$EVA_DATA/cifar10-images`` (or ``~/datasets/cifar10-images``), then at the
    tarball ``$EVA_CIFAR10_TARBALL`` names.
    """
    from data.registry import default_root

    if (default_root() / "cifar10-images").is_dir():
        return []
    path = os.environ.get("EVA_CIFAR10_TARBALL")
    if path and Path(path).is_file():
        return [f"dataset.tarball={Path(path).resolve()}"]
    return None


def data_overrides(sweep: Sweep) -> list[str] | None:
    """Environment overrides a sweep's data need (None: the data are not available here)."""
    if sweep.fixed.get("dataset") == "cifar10_images":
        return cifar10_images_overrides()
    return []


def sweep_command(
    sweep: Sweep,
    layout: Layout,
    extra: Sequence[str] = (),
    force: bool = False,
    nproc: int = 1,
) -> list[str]:
    """The ``train.py -m`` command line of a sweep."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    return [
        *launcher,
        str(ROOT / "train.py"),
        "-m",
        *sweep.overrides(),
        f"out_root={layout.runs}",
        f"skip_completed={str(not force).lower()}",
        f"resume={str(not force).lower()}",
        "trainer.progress=false",
        "hydra.sweep.subdir=${hydra:job.override_dirname}",
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join(EXCLUDE_KEYS)}]",
        *(data_overrides(sweep) or []),
        *extra,
    ]


def unfinished(sweeps: Sequence[Sweep], layout: Layout, force: bool = False) -> list[Sweep]:
    """The sweeps with at least one run not finished (all of them with ``force``)."""
    return [
        s
        for s in sweeps
        if force or any(finished_run(layout.run_dir(s, r)) is None for r in s.runs())
    ]


def pending(target: Target, layout: Layout, force: bool = False) -> list[Sweep]:
    """The target's sweeps with at least one run not finished (all of them with ``force``);
    a tuned setting contributes its learning-rate sweep here (its final seeds come after)."""
    sweeps = [*target.sweeps, *(current_sweep(t, layout) for t in target.tuned)]
    return unfinished(sweeps, layout, force)


def final_sweeps(target: Target, layout: Layout) -> tuple[list[Sweep], list[str]]:
    """The final-seed sweeps of the target's tuned settings whose rate is chosen, and a note for
    each setting whose sweep is unfinished (or all diverged)."""
    sweeps, notes = [], []
    for tuned in target.tuned:
        lr = chosen_lr(tuned, layout)
        if lr is None:
            notes.append(f"not run yet: {tuned.label} at its best lr (its lr sweep is unfinished)")
        else:
            sweeps.extend(tuned.finals(lr))
    return sweeps, notes


def bench_command(
    job_name: str, args: Sequence[str], layout: Layout, script: str = "scripts.bench"
) -> list[str]:
    """A benchmark call: ``script`` (a module run with ``-m``, or a ``.py`` file relative to the
    repository) with ``args``, ``--out`` and ``--name``."""
    run = [str(ROOT / script)] if script.endswith(".py") else ["-m", script]
    return [
        sys.executable,
        *run,
        *args,
        "--out",
        str(layout.bench),
        "--name",
        job_name,
    ]


def _show(command: list[str]) -> str:
    line = shlex.join(command[1:] if command[0] == sys.executable else command)
    return f"$ python {line}" if command[0] == sys.executable else f"$ {line}"


def _environment(jobs: int) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.setdefault("WANDB_MODE", "offline")
    if jobs > 1:  # runs side by side: one intra-op thread share each
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    return env


def run_targets(
    targets: Sequence[Target],
    layout: Layout,
    *,
    force: bool = False,
    dry_run: bool = False,
    extra: Sequence[str] = (),
    nproc: int = 1,
    jobs: int = 1,
    time_limit: float | None = None,
    only: Sequence[str] = (),
) -> dict[str, list[str]]:
    """Launch the targets' unfinished runs and benchmark calls; returns log lines per target.

    ``jobs == 1``: one ``train.py -m`` multirun per sweep, one after another (``extra`` may
    name a Hydra launcher, e.g. Slurm), sweeps of all the targets that differ in one value
    joined into one multirun (:func:`~scripts.repro.sweeps.merge_sweeps`); tuned settings first
    run their lr sweeps, then their final seeds at the chosen rate (after the rates a sweep adds
    past an edge its best sat on).
    ``jobs > 1`` (or a ``time_limit``): every run is its own
    process (:class:`~scripts.repro.pool.RunPool`), up to ``jobs``
    at a time (e.g. several small runs on one GPU), final seeds queued as soon as their sweep
    has finished; each run's output goes to ``output.log`` in its directory. ``time_limit``
    (seconds, parallel mode): launch nothing after it and stop the runs still going (their
    checkpoints stay; the next call resumes them). ``only``: ``fnmatch`` patterns of run
    directory names; the pool runs just the matching runs (e.g. ``*optimizer=kfac,seed=1``).

    Raises:
        RuntimeError: a sweep, run or benchmark exited non-zero (its output has been shown or
            logged), or the time limit stopped runs.
    """
    notes: dict[str, list[str]] = {t.name: [] for t in targets}
    env = _environment(jobs)
    available = []
    for target in targets:
        for sweep in [*target.sweeps, *(t.sweep() for t in target.tuned)]:
            if data_overrides(sweep) is None:
                notes[target.name].append(
                    f"not run: {sweep.group} sweep — CIFAR-10 images not found (unpack "
                    "cifar10-images.tar.gz into $EVA_DATA/cifar10-images or set "
                    "EVA_CIFAR10_TARBALL)"
                )
        if not any(n.startswith("not run:") for n in notes[target.name]):
            available.append(target)
    benches: list[list[str]] = []
    for target in targets:
        for job in target.bench:
            command = bench_command(job.name, job.args, layout, job.script)
            # a benchmark two targets share (Tables 5 and 10: one record) runs once
            if command not in benches and (
                force or not (layout.bench / f"{job.name}.json").exists()
            ):
                benches.append(command)
    if (jobs > 1 or time_limit is not None or only) and not dry_run:
        from scripts.repro.pool import RunPool

        pool = RunPool(layout, available, force, extra, nproc, jobs, time_limit, env, only)
        failures = pool.run()
        for command in benches:
            print(_show(command), flush=True)
            if subprocess.run(command, cwd=ROOT, env=env).returncode != 0:
                failures.append(f"benchmark {command[-1]}")
        if failures:
            raise RuntimeError(f"{len(failures)} run(s) did not finish: {'; '.join(failures)}")
        return notes

    def launch(command: list[str]) -> None:
        print(_show(command), flush=True)
        if dry_run:
            return
        proc = subprocess.run(command, cwd=ROOT, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"a command exited with status {proc.returncode}")

    launched: set[tuple[str, ...]] = set()

    def launch_sweeps(sweeps: Sequence[Sweep]) -> None:
        for sweep in merge_sweeps(unfinished(sweeps, layout, force)):
            command = sweep_command(sweep, layout, extra, force, nproc)
            if tuple(command) not in launched:  # a sweep two targets share runs once
                launched.add(tuple(command))
                launch(command)

    # stage by stage over all targets, so that merge_sweeps can join sweeps of different targets
    launch_sweeps([s for t in available for s in (*t.sweeps, *(x.sweep() for x in t.tuned))])
    tuned = [x for t in available for x in t.tuned]
    for _ in range(max((x.extend for x in tuned), default=0)):  # rates past an edge, by round
        launch_sweeps([current_sweep(x, layout) for x in tuned])
    finals = []
    for target in available:
        sweeps, waiting = final_sweeps(target, layout)
        notes[target.name] += waiting
        finals += sweeps
    launch_sweeps(finals)
    for command in benches:
        launch(command)
    return notes

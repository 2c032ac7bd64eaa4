"""The local record of a run, from which tables and figures are built (never from W&B).

A run directory holds:

- ``record.json`` — resolved config, git commit, status (``running|completed|failed``), the
  failure message if any, wall-clock seconds per phase, peak memory, final summary;
- ``metrics.jsonl`` — one JSON object per evaluated epoch.

Files are replaced atomically, so a reader never sees half a record.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from harness.machine import cpu_model, machine_description

# cpu_model is re-exported for callers that import it from here
__all__ = ["RunRecord", "atomic_write_text", "cpu_model", "finished_run", "git_commit"]

STATUSES = ("running", "completed", "failed")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


REPO_ROOT = Path(__file__).resolve().parents[1]


def command_line(argv: list[str], root: Path = REPO_ROOT) -> str:
    """The command that started a run, with paths inside the repository written relative to it
    (``train.py …``, ``out_root=results/runs/cpu``), so that records carry no machine paths."""
    prefix = f"{root}/"
    return " ".join(arg.replace(prefix, "") for arg in argv)


def git_commit(cwd: Path | None = None) -> str | None:
    """The current commit hash (with ``-dirty`` when the tree has changes), or ``None``.

    ``EVA_GIT_COMMIT``, when set, is taken as is: for a copy of the tree whose ``.git`` is not
    the one it came from (e.g. a GPU machine that receives the working files only).
    """
    given = os.environ.get("EVA_GIT_COMMIT")
    if given:
        return given
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty.strip() else "")


class RunRecord:
    """Reads and writes ``record.json`` and ``metrics.jsonl`` in a run directory."""

    def __init__(self, run_dir: Path | str) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / "record.json"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def start(
        self, config: dict[str, Any], command: str, resumed: bool, device: str | None = None
    ) -> None:
        """Mark the run as running, keeping phases/metrics of a resumed run. ``device`` names
        what the run computes on (e.g. ``NVIDIA H200``); the CPU's model is always recorded.
        ``devices`` lists every device that computed some of the run's epochs, in order (a run
        resumed on another machine has two)."""
        devices: list[str] = []
        if resumed:
            earlier = self.data.get("host", {}).get("device")
            devices = list(self.data.get("devices") or ([earlier] if earlier else []))
        if not devices or devices[-1] != (device or "cpu"):
            devices.append(device or "cpu")
        machine = machine_description()  # the host; ``device`` names the accelerator, if any
        self.data.update(
            config=config,
            command=command,
            git_commit=git_commit(),
            host={
                "python": machine["python"],
                "machine": machine["machine"],
                "cpus": machine["cpu_count"],
                "cpu": machine["cpu"],
                "device": device or "cpu",
            },
            devices=devices,
            status="running",
            error=None,
            resumed=resumed or self.data.get("resumed", False),
        )
        self.data.setdefault("phases", {})
        if not resumed:
            self.data["phases"] = {}
            self.data.pop("summary", None)
            self.metrics_path.unlink(missing_ok=True)
        self.save()

    def add_phase_time(self, phase: str, seconds: float) -> None:
        """Accumulate wall-clock seconds spent in a phase (``train``, ``eval``, ``checkpoint``)."""
        phases = self.data.setdefault("phases", {})
        phases[phase] = phases.get(phase, 0.0) + seconds

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        """Append one epoch's metrics (replacing any line of the same epoch from a killed run)."""
        rows = [r for r in self.metrics() if r.get("epoch") != metrics.get("epoch")]
        rows.append(metrics)
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def metrics(self) -> list[dict[str, Any]]:
        """All epoch rows written so far."""
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def finish(
        self, status: str, summary: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        """Set the final status (``completed`` or ``failed``) and summary."""
        assert status in STATUSES
        self.data.update(status=status, error=error)
        if summary is not None:
            self.data["summary"] = summary
        self.save()

    def save(self) -> None:
        """Write ``record.json`` atomically."""
        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str) + "\n")


def finished_run(run_dir: Path | str) -> dict[str, Any] | None:
    """``{"status", "summary"}`` of a run that completed or diverged in ``run_dir``, else None.

    A diverged run is finished (running it again would diverge again); a run that stopped for any
    other reason (killed, crashed, still running) is not, and ``resume=true`` continues it.
    """
    record = RunRecord(run_dir)
    status = record.data.get("status")
    if status == "completed":
        return {"status": status, "summary": record.data.get("summary", {})}
    if status == "failed" and str(record.data.get("error") or "").startswith("Diverged"):
        return {"status": "diverged", "summary": {}}
    return None

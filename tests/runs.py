"""What a ``train.py`` run leaves behind and says: its record, its metrics, its one error line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def record_of(run_dir: Path) -> dict[str, Any]:
    """The run's ``record.json``."""
    return json.loads((run_dir / "record.json").read_text())


def metrics_of(run_dir: Path) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl``, one dict per line."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def one_error_line(stderr: str) -> str:
    """The whole stderr must be one line starting with ``error:`` and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]

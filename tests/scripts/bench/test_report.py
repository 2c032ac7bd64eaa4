"""The markdown of step-time records, the committed ones included (records are data)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.bench.report import render, render_profile
from tests.repository import ROOT

RECORDS = sorted((ROOT / "results" / "bench").glob("steptime-*.json"))


@pytest.mark.parametrize("path", RECORDS, ids=[p.stem for p in RECORDS])
def test_committed_records_still_render(path: Path) -> None:
    record = json.loads(path.read_text())
    if record.get("kind") != "step-time":  # e.g. the language model's, read by lm_report only
        with pytest.raises(ValueError, match="not a step-time record"):
            render(record)
        return
    md = render(record)
    assert md.startswith("# Step time, memory and communication relative to SGD")
    for model, entry in record["models"].items():
        assert f"## {model}" in md
        for label in entry["algorithms"]:
            assert f"| {label} |" in md or f"| **{label}** |" in md or "failed" in md


def test_old_profile_records_keep_their_phases() -> None:
    """A profile from the earlier per-phase timers (rows ``total``, ``forward hooks``..., as
    records before 2026-12 hold them) still renders, each phase with its time and share."""
    prof = {
        "batch": 128,
        "steps": 10,
        "phases": [["total", 0], ["forward", 1], ["forward hooks", 2], ["backward", 1],
                   ["preconditioner.step", 1], ["precondition", 2], ["optimizer.step", 1]],
        "sgd_ms": {"total": 1212.9, "forward": 491.7, "backward": 720.6, "optimizer.step": 5.3},
        "algo_ms": {"total": 1273.7, "forward": 513.9, "forward hooks": 10.8, "backward": 749.2,
                    "preconditioner.step": 7.0, "precondition": 5.0, "optimizer.step": 4.8},
    }  # fmt: skip
    md = "\n".join(render_profile("resnet110", "eva", prof))
    assert "(10 steps, median ms per step)" in md and "torch.profiler" not in md
    indent = "&nbsp;" * 8  # two levels
    assert f"| {indent}forward hooks | — | 10.80 | +10.80 | 18% |" in md
    assert "Overhead over SGD: +60.80 ms per step (+5.0%)" in md


def test_report_subcommand_rewrites_the_markdown(tmp_path: Path) -> None:
    source = ROOT / "results" / "bench" / "steptime-cpu-resnet20.json"
    shutil.copy(source, tmp_path / source.name)
    (tmp_path / "bad.json").write_text('{"kind": "time-to-target"}')
    command = [sys.executable, "-m", "scripts.bench", "report"]
    proc = subprocess.run([*command, str(tmp_path / source.name)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / source.with_suffix(".md").name).read_text() == render(
        json.loads(source.read_text())
    )
    bad = subprocess.run([*command, str(tmp_path / "bad.json")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "not a step-time record" in bad.stderr

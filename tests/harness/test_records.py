"""``harness.records.RunRecord``: round trips, atomic replacement, resume semantics, the command
line and commit a record keeps.
"""

from __future__ import annotations

import json

import pytest

import harness.checkpoint
import harness.records
from harness.records import RunRecord, atomic_write_text

CONFIG = {"optimizer": {"name": "eva", "lr": 0.1}, "trainer": {"epochs": 3}}


def files(path):
    return sorted(p.name for p in path.iterdir())


# ---------------------------------------------------------------------------- RunRecord
def test_round_trip(tmp_path):
    record = RunRecord(tmp_path / "run")
    record.start(CONFIG, "train.py optimizer=eva", resumed=False)
    on_disk = json.loads((tmp_path / "run" / "record.json").read_text())
    assert on_disk["status"] == "running" and on_disk["config"] == CONFIG
    assert on_disk["command"] == "train.py optimizer=eva" and on_disk["resumed"] is False
    assert "git_commit" in on_disk and on_disk["error"] is None

    for epoch in (1, 2):
        record.log_epoch({"epoch": epoch, "train_loss": 1.0 / epoch})
        record.add_phase_time("train", 1.5)
        record.add_phase_time("eval", 0.25)
    record.finish("completed", summary={"train_loss": 0.5})

    again = RunRecord(tmp_path / "run")
    assert again.data == record.data
    assert again.data["status"] == "completed" and again.data["summary"] == {"train_loss": 0.5}
    assert again.data["phases"] == {"train": 3.0, "eval": 0.5}
    assert again.metrics() == [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}]
    assert files(tmp_path / "run") == ["metrics.jsonl", "record.json"]  # no temp files left


def test_failed_run_keeps_error(tmp_path):
    record = RunRecord(tmp_path)
    record.start(CONFIG, "cmd", resumed=False)
    record.finish("failed", error="Diverged: training loss is nan at step 3")
    data = RunRecord(tmp_path).data
    assert data["status"] == "failed" and data["error"].startswith("Diverged")
    with pytest.raises(AssertionError):
        record.finish("finished")


def test_log_epoch_replaces_a_repeated_epoch(tmp_path):
    """A run killed after logging epoch 2 but before its checkpoint logs epoch 2 again."""
    record = RunRecord(tmp_path)
    record.start(CONFIG, "cmd", resumed=False)
    record.log_epoch({"epoch": 1, "train_loss": 3.0})
    record.log_epoch({"epoch": 2, "train_loss": 2.0})
    record.log_epoch({"epoch": 2, "train_loss": 1.5})
    record.log_epoch({"epoch": 3, "train_loss": 1.0})
    assert [(r["epoch"], r["train_loss"]) for r in record.metrics()] == [
        (1, 3.0),
        (2, 1.5),
        (3, 1.0),
    ]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_resumed_start_keeps_history_fresh_start_clears_it(tmp_path):
    first = RunRecord(tmp_path)
    first.start(CONFIG, "cmd", resumed=False)
    first.log_epoch({"epoch": 1, "train_loss": 3.0})
    first.add_phase_time("train", 2.0)
    first.finish("failed", summary={"train_loss": 3.0}, error="KeyboardInterrupt: ")

    resumed = RunRecord(tmp_path)
    resumed.start(CONFIG, "cmd resume=true", resumed=True)
    assert resumed.metrics() == [{"epoch": 1, "train_loss": 3.0}]
    assert resumed.data["phases"] == {"train": 2.0}
    assert resumed.data["status"] == "running" and resumed.data["error"] is None
    assert resumed.data["resumed"] is True
    resumed.log_epoch({"epoch": 2, "train_loss": 2.0})

    fresh = RunRecord(tmp_path)
    fresh.start(CONFIG, "cmd", resumed=False)
    assert fresh.metrics() == [] and not (tmp_path / "metrics.jsonl").exists()
    assert fresh.data["phases"] == {} and "summary" not in fresh.data
    assert RunRecord(tmp_path).data["status"] == "running"


def test_devices_list_every_machine_that_ran_epochs(tmp_path):
    """A run started on a GPU and resumed on the CPU names both, in order; a fresh start, one."""
    RunRecord(tmp_path).start(CONFIG, "cmd", resumed=False, device="NVIDIA H200")
    gpu = RunRecord(tmp_path).data
    assert gpu["devices"] == ["NVIDIA H200"] and gpu["host"]["device"] == "NVIDIA H200"
    RunRecord(tmp_path).start(CONFIG, "cmd", resumed=True)
    RunRecord(tmp_path).start(CONFIG, "cmd", resumed=True)  # resumed again on the same CPU
    both = RunRecord(tmp_path).data
    assert both["devices"] == ["NVIDIA H200", "cpu"] and both["host"]["device"] == "cpu"
    assert both["host"]["cpu"]  # the CPU's model is always recorded
    RunRecord(tmp_path).start(CONFIG, "cmd", resumed=False)
    assert RunRecord(tmp_path).data["devices"] == ["cpu"]


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    atomic_write_text(path, "old\n")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(harness.records.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n"
    assert files(tmp_path) == ["record.json"]


def test_git_commit_is_a_hash_or_none(tmp_path, monkeypatch):
    monkeypatch.delenv("EVA_GIT_COMMIT", raising=False)
    commit = harness.records.git_commit()
    assert commit is None or len(commit.removesuffix("-dirty")) == 40
    assert harness.records.git_commit(tmp_path) is None  # not a repository


def test_git_commit_given_by_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_GIT_COMMIT", "0123abc")
    assert harness.records.git_commit(tmp_path) == "0123abc"


def test_command_line_writes_repository_paths_relative(tmp_path):
    """A run's recorded command names the script and in-repository paths relative to the
    repository (records are committed; machine paths are not)."""
    from harness.records import command_line

    root = tmp_path / "checkout"
    argv = [f"{root}/train.py", "-m", f"out_root={root}/results/runs/cpu", "dataset.root=/data/x"]
    assert command_line(argv, root) == (
        "train.py -m out_root=results/runs/cpu dataset.root=/data/x"
    )

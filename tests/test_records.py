"""``harness.records.RunRecord`` and ``harness.checkpoint``: round trips, atomic replacement,
resume semantics, RNG states."""

from __future__ import annotations

import json
import random

import pytest
import torch

import harness.checkpoint
import harness.records
from harness.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
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


# ---------------------------------------------------------------------------- checkpoints
def draws() -> tuple[list[float], torch.Tensor]:
    return [random.random() for _ in range(3)], torch.rand(4)


def test_rng_state_round_trip_in_memory():
    state = rng_state()
    first = draws()
    set_rng_state(state)
    second = draws()
    assert first[0] == second[0] and torch.equal(first[1], second[1])


def test_checkpoint_round_trip_reproduces_random_numbers(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": model.state_dict(), "rng": rng_state(), "epoch": 4})
    expected = draws()
    random.seed(123)
    torch.manual_seed(123)
    state = load_checkpoint(path)
    assert state["epoch"] == 4
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    set_rng_state(state["rng"])
    got = draws()
    assert got[0] == expected[0] and torch.equal(got[1], expected[1])
    assert files(tmp_path) == ["checkpoint.pt"]


@pytest.mark.parametrize("error", [RuntimeError("no space left"), KeyboardInterrupt()])
def test_failing_save_keeps_previous_checkpoint(tmp_path, monkeypatch, error):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.arange(5.0)})
    before = path.read_bytes()
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        real_save({"epoch": 2, "w": torch.zeros(5)}, f, *args, **kwargs)
        with open(f, "r+b") as stream:  # leave a truncated file behind, as a crash would
            stream.truncate(10)
        raise error

    monkeypatch.setattr(harness.checkpoint.torch, "save", half_then_fail)
    with pytest.raises(type(error)):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(5)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert files(tmp_path) == ["checkpoint.pt"]
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(5.0))


def test_command_line_writes_repository_paths_relative(tmp_path):
    """A run's recorded command names the script and in-repository paths relative to the
    repository (records are committed; machine paths are not)."""
    from harness.records import command_line

    root = tmp_path / "checkout"
    argv = [f"{root}/train.py", "-m", f"out_root={root}/results/runs/cpu", "dataset.root=/data/x"]
    assert command_line(argv, root) == (
        "train.py -m out_root=results/runs/cpu dataset.root=/data/x"
    )

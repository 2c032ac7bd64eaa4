"""``harness.checkpoint``: RNG states and checkpoints round trip; a failing save keeps the previous
checkpoint.
"""

from __future__ import annotations

import random

import pytest
import torch

import harness.checkpoint
import harness.records
from harness.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def files(path):
    return sorted(p.name for p in path.iterdir())


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

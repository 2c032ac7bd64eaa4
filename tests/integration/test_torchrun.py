"""``torchrun --nproc_per_node=2 train.py ...`` end to end (gloo, CPU) equals one process.

The model is the (BatchNorm-free) autoencoder on synthetic data, so that two workers with half
the global batch each must end with the same weights as one process with all of it: data order,
gradient averaging (DDP), statistics averaging (the preconditioner's reducer) and rank-0-only
records are all exercised.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.launch import ARGS, clean_env, torchrun_command
from tests.repository import ROOT
from tests.runs import metrics_of


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("optimizer", ["eva", "kfac"])
def test_torchrun_two_workers_equal_one_process(optimizer: str, tmp_path: Path) -> None:
    common = [*ARGS, f"optimizer={optimizer}", "optimizer.lr=0.05"]
    torchrun = torchrun_command()
    multi = _run([*torchrun, *common, f"out_root={tmp_path / 'multi'}"])
    assert multi.returncode == 0, multi.stderr[-3000:]
    single = _run([sys.executable, "train.py", *common, f"out_root={tmp_path / 'single'}"])
    assert single.returncode == 0, single.stderr[-3000:]
    ckpt = {
        name: torch.load(tmp_path / name / "adhoc" / "run" / "checkpoint.pt", weights_only=True)
        for name in ("multi", "single")
    }
    assert ckpt["multi"]["step"] == ckpt["single"]["step"] == 8
    for key, want in ckpt["single"]["model"].items():
        torch.testing.assert_close(ckpt["multi"]["model"][key], want, rtol=1e-5, atol=1e-6)
    # rank 0 alone writes the record; its metrics are averaged over both workers
    records = list((tmp_path / "multi").rglob("record.json"))
    assert len(records) == 1
    # KL clipping's ν is computed from all-reduced statistics: one worker's equals one process's
    rows = {name: metrics_of(tmp_path / name / "adhoc" / "run") for name in ("multi", "single")}
    assert [r["kl_clip_nu"] for r in rows["multi"]] == pytest.approx(
        [r["kl_clip_nu"] for r in rows["single"]], rel=1e-4
    )


def test_batch_not_divisible_by_world_size(tmp_path: Path) -> None:
    torchrun = torchrun_command()
    proc = _run([*torchrun, *ARGS, "optimizer=sgd", "trainer.batch_size=7", f"out_root={tmp_path}"])
    assert proc.returncode != 0
    assert "trainer.batch_size must be divisible by the number of workers (2)" in proc.stderr
    # torchrun's launcher reports the failed workers in its own words; the workers print one line
    assert 'train.py", line' not in proc.stderr
    assert not list(tmp_path.rglob("record.json"))


@pytest.mark.long
def test_resumed_distributed_run_equals_uninterrupted(tmp_path: Path) -> None:
    """Two workers stopped mid-epoch 2 and resumed end with the uninterrupted run's weights."""
    common = [*ARGS, "optimizer=kfac", "optimizer.update_interval=3", "optimizer.lr=0.05"]
    whole = _run([*torchrun_command(), *common, f"out_root={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    parts = tmp_path / "parts"
    first = _run([*torchrun_command(), *common, "trainer.max_steps=6", f"out_root={parts}"])
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run([*torchrun_command(), *common, "resume=true", f"out_root={parts}"])
    assert second.returncode == 0, second.stderr[-3000:]
    want = torch.load(tmp_path / "whole" / "adhoc" / "run" / "checkpoint.pt", weights_only=True)
    got = torch.load(parts / "adhoc" / "run" / "checkpoint.pt", weights_only=True)
    assert got["step"] == want["step"] == 8
    for key, value in want["model"].items():
        assert torch.equal(got["model"][key], value), key

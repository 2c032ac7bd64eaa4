"""``train.py`` end to end: a few steps for every optimizer config, exact resume, divergence,
W&B offline, and what a run record holds (bad input: ``tests/test_train_input.py``).

Most runs call ``train.train`` in-process (tiny ResNet-20 on 8×8 synthetic images); a few go
through ``python train.py`` in a subprocess to check exit codes and stderr.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from harness import loop
from harness.checkpoint import load_checkpoint
from tests.repository import CONF, TINY
from tests.runs import metrics_of, one_error_line, record_of

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIMIZERS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))

# The autoencoder on 64-dim synthetic vectors: Linear layers only, fast even under bf16 autocast.
TINY_AE = (
    *(o for o in TINY if not o.startswith(("model=", "dataset.input_shape="))),
    "model=autoencoder",
    "model.kwargs.dims=[64,16,4]",
    "dataset.num_classes=null",
    "dataset.input_shape=[64]",
)


def assert_states_equal(a: Any, b: Any, where: str = "") -> None:
    """Nested dicts/lists of tensors and plain values are exactly equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_states_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_states_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def write_fake_cifar10(root: Path, per_batch: int = 8) -> None:
    """torchvision's ``cifar-10-batches-py`` layout with ``per_batch`` images per file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=per_batch)],
        }
        with open(folder / name, "wb") as stream:
            pickle.dump(batch, stream, protocol=2)


# ---------------------------------------------------------------------------- every optimizer
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_two_steps_every_optimizer(train_run, tiny, tmp_path, optimizer):
    run_dir = tmp_path / "adhoc" / optimizer
    summary = train_run(run_dir, [*tiny, f"optimizer={optimizer}", "trainer.max_steps=2"])
    assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["test_loss"])
    record = record_of(run_dir)
    assert record["status"] == "completed" and record["error"] is None
    assert record["config"]["optimizer"]["name"] == optimizer
    (row,) = metrics_of(run_dir)
    assert (row["epoch"], row["step"]) == (1, 2)
    assert math.isfinite(row["train_loss"]) and 0 <= row["test_acc"] <= 1
    assert not (run_dir / "wandb").exists()  # logger.wandb=false: W&B never started


@pytest.mark.parametrize(
    "optimizer",
    OPTIMIZERS,
)
def test_two_steps_bf16_autocast(train_run, tmp_path, optimizer):
    run_dir = tmp_path / "adhoc" / optimizer
    overrides = [*TINY_AE, f"optimizer={optimizer}", "trainer.max_steps=2", "trainer.amp=bf16"]
    summary = train_run(run_dir, overrides)
    assert math.isfinite(summary["train_loss"])
    assert record_of(run_dir)["status"] == "completed"


# ---------------------------------------------------------------------------- records
def test_record_contents(train_run, compose, tiny, tmp_path):
    run_dir = tmp_path / "adhoc" / "rec"
    overrides = [*tiny, "optimizer=kfac", "trainer.epochs=2", "name=rec"]
    summary = train_run(run_dir, overrides)
    record = record_of(run_dir)
    resolved = OmegaConf.to_container(
        compose([*overrides, f"out_root={run_dir.parent}"]), resolve=True
    )
    assert record["config"] == resolved and "${" not in json.dumps(record["config"])
    assert "git_commit" in record and "command" in record
    assert record["status"] == "completed" and record["error"] is None
    assert record["resumed"] is False
    phases = record["phases"]
    assert phases["train"] > 0 and phases["eval"] > 0 and phases["checkpoint"] > 0
    assert record["peak_memory_mb"] > 0
    assert record["summary"]["peak_memory_mb"] == record["peak_memory_mb"]
    assert record["summary"] == pytest.approx(summary)
    assert (summary["epoch"], summary["step"]) == (2, 8)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "train_seconds"):
        assert math.isfinite(summary[key]), key
    rows = metrics_of(run_dir)
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 4), (2, 8)]
    assert rows[-1] == {k: v for k, v in summary.items() if k != "peak_memory_mb"}
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (2, 8)
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint.pt",
        "metrics.jsonl",
        "record.json",
    ]


@pytest.mark.parametrize(
    ("overrides", "nu", "rate"),
    [
        (["optimizer=eva", "optimizer.kl_clip=1e-12"], (0, 1), 1.0),  # binds at every step
        (["optimizer=eva", "optimizer.kl_clip=1e12"], (1, 1), 0.0),  # never binds
        (["optimizer=kfac", "optimizer.kl_clip=1e-12"], (0, 1), 1.0),
        (["optimizer=eva", "optimizer.kl_clip=null"], None, None),  # no clipping: not logged
        (["optimizer=eva_f"], None, None),  # KL normalization, not clipping
        (["optimizer=sgd"], None, None),
    ],
)
def test_epochs_log_how_hard_kl_clipping_held_steps_back(
    train_run, tiny, tmp_path, overrides, nu, rate
):
    """``kl_clip_nu`` (mean ν of Eq. 16) and ``kl_clip_rate`` (share of steps with ν < 1) per
    epoch, for runs that clip; absent otherwise."""
    run_dir = tmp_path / "adhoc" / "clip"
    train_run(run_dir, [*tiny, *overrides, "trainer.epochs=2"])
    for row in metrics_of(run_dir):
        if nu is None:
            assert "kl_clip_nu" not in row and "kl_clip_rate" not in row
            continue
        low, high = nu
        assert low < row["kl_clip_nu"] <= high if low < high else row["kl_clip_nu"] == high
        assert row["kl_clip_rate"] == rate


def test_resume_without_checkpoint_starts_from_scratch(train_run, tiny, tmp_path, capsys):
    run_dir = tmp_path / "adhoc" / "fresh"
    train_run(run_dir, [*tiny, "optimizer=sgd", "trainer.max_steps=1", "resume=true"])
    assert "resume: no checkpoint at" in capsys.readouterr().err
    record = record_of(run_dir)
    assert record["status"] == "completed" and record["resumed"] is False


def test_resuming_a_finished_run_keeps_its_summary(train_run, tiny, tmp_path):
    run_dir = tmp_path / "adhoc" / "done"
    overrides = [*tiny, "optimizer=sgd", "trainer.epochs=1"]
    first = train_run(run_dir, overrides)
    train_run(run_dir, [*overrides, "resume=true"])  # e.g. a whole sweep re-launched
    summary = record_of(run_dir)["summary"]
    assert summary.get("test_loss") == first["test_loss"]


def test_batch_larger_than_training_set_is_an_error(train_run, tiny, tmp_path):
    with pytest.raises(ValueError, match="trainer.batch_size"):
        train_run(tmp_path / "adhoc" / "small", [*tiny, "dataset.num_train=4"])


# ---------------------------------------------------------------------------- resume
def _resume_case(name: str, tiny: tuple[str, ...], tmp_path: Path) -> tuple[list[str], int]:
    """Overrides of one resume scenario and its steps per epoch."""
    if name == "eva":
        return [*tiny, "optimizer=eva"], 4
    if name == "kfac-interval3":
        return [*tiny, "optimizer=kfac", "optimizer.update_interval=3"], 4
    # Real CIFAR augmentation (random crop + flip, drawn per batch) on a fake CIFAR-10 folder.
    write_fake_cifar10(tmp_path / "cifar", per_batch=4)  # 20 training images: 5 steps of 4
    base = [o for o in tiny if not o.startswith(("dataset", "trainer.batch_size"))]
    overrides = [
        *base,
        "dataset=cifar10",
        f"dataset.root={tmp_path / 'cifar'}",
        "dataset.augment=true",
        "trainer.batch_size=4",
        "optimizer=kfac",
        "optimizer.update_interval=3",
    ]
    if name == "kfac-cifar-crop-flip-cutmix":
        overrides.append("dataset.cutmix=true")
    return overrides, 5


@pytest.mark.parametrize(
    "case", ["eva", "kfac-interval3", "kfac-cifar-crop-flip", "kfac-cifar-crop-flip-cutmix"]
)
def test_resume_mid_epoch_is_exact(train_run, tiny, tmp_path, case):
    overrides, per_epoch = _resume_case(case, tiny, tmp_path)
    common = [*overrides, "trainer.epochs=3", "schedule.warmup_epochs=1"]
    a, b = tmp_path / "adhoc" / "a", tmp_path / "adhoc" / "b"
    summary_a = train_run(a, common)

    stop = per_epoch + per_epoch // 2 + 1  # killed in the middle of epoch 2
    train_run(b, [*common, f"trainer.max_steps={stop}"])
    state = load_checkpoint(b / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (1, per_epoch)  # the last full epoch
    summary_b = train_run(b, [*common, "resume=true"])

    final_a = load_checkpoint(a / "checkpoint.pt")
    final_b = load_checkpoint(b / "checkpoint.pt")
    assert (final_a["epoch"], final_a["step"]) == (final_b["epoch"], final_b["step"])
    assert final_a["step"] == 3 * per_epoch
    for key, tensor in final_a["model"].items():
        assert torch.equal(tensor, final_b["model"][key]), key
    for part in ("optimizer", "preconditioner", "scheduler", "loader"):
        assert_states_equal(final_a[part], final_b[part], part)

    def rows(run_dir):
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in metrics_of(run_dir)]

    assert rows(a) == rows(b)  # epoch 2 of the interrupted run was replaced
    for key in ("train_loss", "test_loss", "test_acc", "lr"):
        assert summary_a[key] == summary_b[key], key
    record = record_of(b)
    assert record["status"] == "completed" and record["resumed"] is True


# ---------------------------------------------------------------------------- divergence
@pytest.mark.parametrize(
    "optimizer",
    OPTIMIZERS,
)
def test_divergence_keeps_checkpoint_of_last_good_epoch(
    train_run, tiny, tmp_path, monkeypatch, optimizer
):
    real_loss = loop.Run.loss

    def loss_inf_from_epoch_2(self, output, target):
        value = real_loss(self, output, target)
        return value * math.inf if self.epoch >= 1 else value

    monkeypatch.setattr(loop.Run, "loss", loss_inf_from_epoch_2)
    run_dir = tmp_path / "adhoc" / "div"
    overrides = [*tiny, f"optimizer={optimizer}", "trainer.epochs=3"]
    if optimizer in ("kfac", "shampoo", "foof", "foof_rank1"):
        overrides.append("optimizer.update_interval=1")  # factorize the inf statistics too
    if optimizer == "mfac":
        overrides.append("optimizer.num_grads=8")
    with pytest.raises(loop.Diverged, match="training loss is"):
        train_run(run_dir, overrides)
    record = record_of(run_dir)
    assert record["status"] == "failed" and record["error"].startswith("Diverged:")
    assert [r["epoch"] for r in metrics_of(run_dir)] == [1]
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (1, 4)
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint.pt",
        "metrics.jsonl",
        "record.json",
    ]


def test_divergence_exits_1_with_one_line(cli, train_run, tiny, tmp_path):
    out = tmp_path / "runs"
    run_dir = out / "adhoc" / "div"
    train_run(run_dir, [*tiny, "optimizer=sgd", "trainer.epochs=1"])  # an earlier good run
    before = (run_dir / "checkpoint.pt").read_bytes()
    args = [*tiny, "optimizer=sgd", "optimizer.lr=1e30", "trainer.log_interval=1"]
    proc = cli([*args, "name=div", f"out_root={out}"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc.stderr)
    assert "nan" in line or "inf" in line
    record = record_of(run_dir)
    assert record["status"] == "failed" and record["error"].startswith("Diverged:")
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1
    assert not list(tmp_path.rglob("wandb"))  # logger.wandb=false: no W&B directory anywhere


# ---------------------------------------------------------------------------- W&B
def test_wandb_offline_writes_offline_run_without_network(cli, tiny, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "runs"
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port: any request fails fast
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb-dir"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "WANDB_BASE_URL": dead,
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
    }
    args = [o for o in tiny if not o.startswith("logger.wandb")]
    start = time.monotonic()
    proc = cli(
        [*args, "logger.wandb=true", "trainer.epochs=2", "name=wb", f"out_root={out}"],
        cwd=tmp_path,
        env=env,
        timeout=90,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    run_dir = out / "adhoc" / "wb"
    offline = list(run_dir.glob("wandb/offline-run-*"))
    assert len(offline) == 1, list(tmp_path.rglob("*run-*"))
    assert list(offline[0].glob("*.wandb"))  # the run's data, for `wandb sync` later
    assert not [p for p in tmp_path.rglob("run-*") if p.is_dir()]  # no online run
    assert record_of(run_dir)["status"] == "completed"
    assert elapsed < 60  # no network waits (init_timeout alone is 30 s)

"""``train.py experiment=lm``: the GPT on the ``pystdlib`` bytes end to end, through the same
in-process route as ``tests/test_train.py`` (tiny model, a few steps, small byte caps), with
AdamW, Eva on SGD and Eva on AdamW; the output head left first-order by the model config; exact
resume; and the language task's loss, accuracy and bits per byte."""

from __future__ import annotations

import math

import pytest
import torch

import train
from harness import loop
from harness.checkpoint import load_checkpoint
from harness.distributed import Workers
from tests.runs import one_error_line, record_of

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_LM = (
    "experiment=lm",
    "model.kwargs.n_layer=1",
    "model.kwargs.d_model=32",
    "model.kwargs.n_head=2",
    "model.kwargs.context=32",
    "dataset.context=32",
    "dataset.steps_per_epoch=3",
    "dataset.max_train_bytes=20000",
    "dataset.max_val_bytes=1025",  # 32 windows
    "trainer.batch_size=8",
    "trainer.eval_batch_size=16",
    "trainer.device=cpu",
    "trainer.progress=false",
    "logger.wandb=false",
)
"""A run of 3 steps per epoch of 8 windows of 32 bytes: milliseconds per step on one thread."""

CPU = Workers(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.mark.parametrize(
    "optimizer", ["adamw", "eva", "eva_adamw", "kfac", "shampoo", "eva_f", "eva_s"]
)
def test_lm_run_writes_a_finite_record(train_run, tmp_path, optimizer):
    """Every optimizer of the comparison, and Eva-f / Eva-s, train the GPT (3-D Linear inputs)."""
    run_dir = tmp_path / "lm" / optimizer
    overrides = [*TINY_LM, f"optimizer={optimizer}", "trainer.max_steps=2"]
    if optimizer not in ("adamw", "eva_adamw"):
        overrides.append("optimizer.lr=0.1")  # an SGD lr (the preset's is AdamW's)
    summary = train_run(run_dir, overrides)
    record = record_of(run_dir)
    assert record["status"] == "completed" and record["error"] is None
    assert record["config"]["model"]["name"] == "gpt" and record["config"]["group"] == "lm"
    assert (summary["epoch"], summary["step"]) == (1, 2)
    for key in ("train_loss", "test_loss", "test_bpb", "train_acc", "test_acc"):
        assert math.isfinite(summary[key]), key
    assert 0 <= summary["test_acc"] <= 1 and 0 <= summary["train_acc"] <= 1
    assert summary["test_bpb"] == pytest.approx(summary["test_loss"] / math.log(2))
    assert summary["test_loss"] < 1.2 * math.log(256)  # nats per byte, near uniform at worst
    assert record["summary"]["test_loss"] == summary["test_loss"]


def test_lm_preset_composes_as_documented(compose):
    cfg = compose(["experiment=lm"])
    assert (cfg.model.name, cfg.dataset.name, cfg.optimizer.name) == ("gpt", "pystdlib", "adamw")
    assert cfg.schedule.name == "cosine" and cfg.schedule.warmup_epochs > 0
    assert cfg.optimizer.weight_decay == 0.1 and 1e-3 <= cfg.optimizer.lr <= 3e-3
    assert list(cfg.model.skip_layers) == ["head"]
    assert cfg.dataset.context <= cfg.model.kwargs.context


def test_model_skip_layers_reach_the_preconditioner(compose):
    """``model.skip_layers`` (the head) unless the optimizer config sets its own."""
    cfg = compose([*TINY_LM, "optimizer=eva_adamw"])
    run = train.build_run(cfg, CPU)
    names = [layer.name for layer in run.preconditioner.layers]
    assert names == [
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc",
        "blocks.0.mlp.proj",
    ]
    assert run.model.head.out_features == 256  # vocab_size from the dataset
    assert isinstance(run.optimizer, torch.optim.AdamW)
    both = compose([*TINY_LM, "optimizer=eva_adamw", "model.skip_layers=[]"])
    assert "head" in [layer.name for layer in train.build_run(both, CPU).preconditioner.layers]
    own = compose([*TINY_LM, "optimizer=eva", "+optimizer.preconditioner.skip_layers=[*.mlp.*]"])
    names = [layer.name for layer in train.build_run(own, CPU).preconditioner.layers]
    assert "head" in names and not any(".mlp." in n for n in names)


def test_language_loss_is_mean_over_every_position(compose):
    cfg = compose([*TINY_LM, "optimizer=adamw"])
    run = train.build_run(cfg, CPU)
    logits = torch.randn(2, 3, 256, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(256, (2, 3), generator=torch.Generator().manual_seed(1))
    want = (
        sum(
            -torch.log_softmax(logits[b, t], dim=0)[targets[b, t]]
            for b in range(2)
            for t in range(3)
        )
        / 6
    )
    torch.testing.assert_close(run.loss(logits, targets), want)
    hits = loop.hits("language", logits, targets)
    per_sequence = (logits.argmax(-1) == targets).double().mean(-1)
    torch.testing.assert_close(hits, per_sequence.sum())


def test_lm_resume_mid_epoch_is_exact(train_run, tmp_path):
    common = [*TINY_LM, "optimizer=eva_adamw", "trainer.epochs=2"]
    a, b = tmp_path / "lm" / "a", tmp_path / "lm" / "b"
    summary_a = train_run(a, common)
    train_run(b, [*common, "trainer.max_steps=5"])  # killed in the middle of epoch 2
    summary_b = train_run(b, [*common, "resume=true"])
    final_a, final_b = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert final_a["step"] == final_b["step"] == 6
    for key, tensor in final_a["model"].items():
        assert torch.equal(tensor, final_b["model"][key]), key
    for key in ("train_loss", "test_loss", "test_acc"):
        assert summary_a[key] == summary_b[key], key
    assert record_of(b)["resumed"] is True


def test_context_longer_than_the_model_is_one_error_line(cli, tmp_path):
    args = [*TINY_LM, "dataset.context=64", "trainer.max_steps=1", f"out_root={tmp_path}"]
    proc = cli(args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "model gpt does not take the inputs of dataset pystdlib" in line
    assert "exceeds the model's context 32" in line

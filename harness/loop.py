"""The training loop of ``train.py``: what one run holds (:class:`Run`), one training epoch
(:func:`train_epoch`: forward, backward, ``preconditioner.step()``, ``optimizer.step()``, the
schedule) and one evaluation (:func:`evaluate`), with losses and accuracies averaged over the
data-parallel workers, and how hard KL clipping held the epoch's steps back (:class:`ClipTally`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from eva import Preconditioner
from harness.checkpoint import rng_state, set_rng_state
from harness.distributed import Workers, mean_across_workers
from harness.pipeline import Data
from models.autoencoder import reconstruction_loss


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class Run:
    """Everything one training run holds."""

    cfg: DictConfig
    workers: Workers
    data: Data
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    preconditioner: Preconditioner | None
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    epoch: int = 0
    step: int = 0

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy for classification; per-image summed BCE for the autoencoder; for a
        language model, next-token cross-entropy averaged over every position of every sequence
        (nats per token)."""
        if self.data.task == "autoencode":
            return reconstruction_loss(output, target)
        if self.data.task == "language":
            return F.cross_entropy(output.flatten(0, -2), target.flatten())
        return F.cross_entropy(output, target)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "preconditioner": self.preconditioner.state_dict() if self.preconditioner else None,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loader": self.data.train.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.preconditioner is not None:
            self.preconditioner.load_state_dict(state["preconditioner"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.data.train.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        self.epoch, self.step = state["epoch"], state["step"]


def hits(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Correct predictions in a batch, per sample: a classified sample counts 1 if right; a
    language-model sequence counts the fraction of its positions whose next token is the
    arg-max. None where there is no accuracy (the autoencoder, soft CutMix labels)."""
    if task == "classify" and target.dim() == 1:
        return (output.argmax(dim=1) == target).sum()
    if task == "language":
        return (output.argmax(dim=-1) == target).double().mean(dim=-1).sum()
    return None


def autocast(run: Run) -> torch.autocast:
    amp = run.cfg.trainer.amp
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "", torch.float32)
    return torch.autocast(run.workers.device.type, dtype=dtype, enabled=amp is not None)


class ClipTally:
    """How hard KL clipping (Eq. 16) held an epoch's steps back, for preconditioners that clip:
    ``kl_clip_nu``, the mean ν over the epoch's preconditioned steps, and ``kl_clip_rate``, the
    share of them with ν < 1. Where the clip binds, ``α·ν·p = sqrt(κ / Σ pᵀg)·p``: the step's
    size is set by κ and the learning rate only scales the weight decay. Summed on the device
    (no synchronisation per step); ν is the same on every worker, so no reduction is needed."""

    def __init__(self, preconditioner: Preconditioner | None, device: torch.device) -> None:
        clips = preconditioner is not None and preconditioner.scaling == "kl_clip"
        self.sums = torch.zeros(2, device=device, dtype=torch.float64) if clips else None
        self.steps = 0

    def add(self, nu: torch.Tensor | None) -> None:
        """Count one step's ν (None: the step scaled nothing)."""
        if self.sums is not None and nu is not None:
            self.sums[0] += nu
            self.sums[1] += nu < 1
            self.steps += 1

    def metrics(self) -> dict[str, float]:
        """The epoch's ``kl_clip_nu`` and ``kl_clip_rate`` (nothing where no step was scaled)."""
        if self.sums is None or not self.steps:
            return {}
        nu, clipped = (float(v) / self.steps for v in self.sums)
        return {"kl_clip_nu": nu, "kl_clip_rate": clipped}


def train_epoch(run: Run, max_steps: int | None) -> dict[str, float]:
    """One pass over the training data; returns mean loss (and accuracy) over all workers."""
    run.net.train()
    device = run.workers.device
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss·n, correct, n
    clip = ClipTally(run.preconditioner, device)
    log_every = run.cfg.trainer.log_interval
    bar = tqdm(
        total=len(run.data.train),
        desc=f"epoch {run.epoch + 1}",
        leave=False,
        disable=not (run.cfg.trainer.progress and run.workers.is_main),
    )
    start = time.perf_counter()
    for i, (x, y) in enumerate(run.data.train):
        if max_steps is not None and run.step >= max_steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        run.optimizer.zero_grad(set_to_none=True)
        with autocast(run):
            out = run.net(x)
            loss = run.loss(out, y)
        run.scaler.scale(loss).backward()
        grad_scale = None
        if run.scaler.is_enabled():
            run.scaler.unscale_(run.optimizer)
            grad_scale = run.scaler.get_scale()
        if run.preconditioner is not None:
            try:
                run.preconditioner.step(grad_scale=grad_scale)
            except torch.linalg.LinAlgError as err:  # e.g. eigh of NaN statistics
                value = float(loss.detach())
                if math.isfinite(value):
                    raise
                raise Diverged(f"training loss is {value} at step {run.step}") from err
            clip.add(run.preconditioner.scale_factor)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        run.step += 1
        n = x.shape[0]
        totals[0] += loss.detach().double() * n
        totals[2] += n
        if (correct := hits(run.data.task, out, y)) is not None:
            totals[1] += correct
        bar.update()
        if (i + 1) % log_every == 0:
            mean_loss = float(totals[0] / totals[2])
            if not math.isfinite(mean_loss):
                raise Diverged(f"training loss is {mean_loss} at step {run.step}")
            rate = float(totals[2]) * run.workers.world_size / (time.perf_counter() - start)
            bar.set_postfix(
                loss=f"{mean_loss:.4f}",
                acc=f"{float(totals[1] / totals[2]):.3f}",
                samples_s=f"{rate:.0f}",
            )
    bar.close()
    totals = mean_across_workers(totals)
    if float(totals[2]) == 0:
        return {}
    metrics = {"train_loss": float(totals[0] / totals[2])}
    if not math.isfinite(metrics["train_loss"]):
        raise Diverged(f"training loss is {metrics['train_loss']} at step {run.step}")
    if run.data.task in ("classify", "language"):
        metrics["train_acc"] = float(totals[1] / totals[2])
    return metrics | clip.metrics()


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Loss (and accuracy) on the test split, averaged over workers."""
    run.net.eval()
    device = run.workers.device
    totals = torch.zeros(3, device=device, dtype=torch.float64)
    for x, y in run.data.test:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(run):
            out = run.net(x)
            loss = run.loss(out, y)
        totals[0] += loss.double() * x.shape[0]
        totals[2] += x.shape[0]
        if (correct := hits(run.data.task, out, y)) is not None:
            totals[1] += correct
    totals = mean_across_workers(totals)
    metrics = {"test_loss": float(totals[0] / totals[2])}
    if run.data.task in ("classify", "language"):
        metrics["test_acc"] = float(totals[1] / totals[2])
    if run.data.task == "language":  # nats per token → bits per token (bytes: bits per byte)
        metrics["test_bpb"] = metrics["test_loss"] / math.log(2)
    return metrics

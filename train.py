"""Train a model with a first-order optimizer and, optionally, an Eva-family preconditioner.

    python train.py optimizer=eva model=resnet110                # the paper's CIFAR-10 setting
    python train.py -m optimizer=eva optimizer.damping=0.003,0.03,0.3
    torchrun --nproc_per_node=4 train.py experiment=cifar optimizer=kfac
    python train.py experiment=lm optimizer=eva_adamw             # byte-level GPT on the stdlib

Every run writes a record under ``results/runs/<group>/<name>/`` (see ``harness/records.py``) and
a checkpoint each epoch; ``resume=true`` continues a killed run exactly where its last checkpoint
left it.
"""

from __future__ import annotations

import random
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from harness.checkpoint import load_checkpoint, save_checkpoint
from harness.config import ConfigError, check_scale, validate
from harness.distributed import Workers, setup_workers, teardown_workers
from harness.loop import Diverged, Run, evaluate, train_epoch
from harness.optimizers import build_optimizer
from harness.pipeline import build_data
from harness.records import RunRecord, command_line, finished_run
from harness.schedules import build_schedule
from harness.wandb_logger import WandbLogger
from models.registry import build_model


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def check_input_shape(
    model: nn.Module,
    shape: tuple[int, ...],
    cfg: DictConfig,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> None:
    """One forward of a zero input in eval mode: a model that cannot take the dataset's inputs
    (e.g. ViT-B/16 built for 224 pixels on 32-pixel CIFAR) is a configuration mistake, reported
    in one line before anything runs."""
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *shape, device=device, dtype=dtype))
    except (RuntimeError, AssertionError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"model {cfg.model.name} does not take the inputs of dataset {cfg.dataset.name} "
            f"(shape {tuple(shape)}): {first} (dataset.resize=N, or for timm's ViT "
            "+model.kwargs.img_size=N, can make image sizes agree)"
        ) from err
    finally:
        model.train(was_training)


def build_run(cfg: DictConfig, workers: Workers) -> Run:
    """Data, model, optimizer, preconditioner, schedule — all from the config."""
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = build_data(cfg.dataset, cfg.trainer, workers, cfg.seed)
    kwargs = cfg.model.get("kwargs")
    model_kwargs: dict[str, Any] = OmegaConf.to_container(kwargs, resolve=True) if kwargs else {}  # type: ignore[assignment]
    if data.task == "classify":
        model_kwargs.setdefault("num_classes", data.num_classes)
    elif data.task == "language":
        model_kwargs.setdefault("vocab_size", data.num_classes)
    model = build_model(cfg.model.name, **model_kwargs).to(workers.device)
    check_input_shape(model, data.input_shape, cfg, workers.device, data.input_dtype)
    net: nn.Module = model
    if workers.world_size > 1:
        device_ids = [workers.device.index] if workers.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)
    optimizer, preconditioner = build_optimizer(cfg.optimizer, model, cfg.model.get("skip_layers"))
    steps_per_epoch = len(data.train)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"trainer.batch_size ({cfg.trainer.batch_size}) leaves no full training batch: the "
            "training set is smaller"
        )
    scheduler = build_schedule(
        optimizer,
        cfg.schedule.name,
        total_steps=cfg.trainer.epochs * steps_per_epoch,
        warmup_steps=round(cfg.schedule.get("warmup_epochs", 0) * steps_per_epoch),
        milestones=cfg.schedule.get("milestones", (0.35, 0.75, 0.9)),
        gamma=cfg.schedule.get("gamma", 0.1),
    )
    scaler = torch.amp.GradScaler(workers.device.type, enabled=cfg.trainer.amp == "fp16")
    return Run(cfg, workers, data, model, net, optimizer, preconditioner, scheduler, scaler)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) one training job; returns the final summary."""
    check_scale(cfg, HydraConfig.get().runtime.choices)  # a user mistake: before any worker starts
    workers = setup_workers(cfg.trainer.device, cfg.trainer.dist_timeout_s)
    validate(cfg, workers.world_size)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.skip_completed and (done := finished_run(run_dir)) is not None:
        if workers.is_main:
            print(f"skip: {run_dir} already finished ({done['status']})", flush=True)
        return done["summary"]
    run = build_run(cfg, workers)
    ckpt_path = run_dir / "checkpoint.pt"
    resumed = bool(cfg.resume) and ckpt_path.exists()
    if resumed:
        run.load_state_dict(load_checkpoint(ckpt_path))
    elif cfg.resume and workers.is_main:
        print(f"resume: no checkpoint at {ckpt_path}; starting from scratch", file=sys.stderr)
    record = RunRecord(run_dir) if workers.is_main else None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger = WandbLogger(
        cfg.logger.wandb and workers.is_main,
        cfg.logger.mode,
        cfg.logger.project,
        cfg.logger.entity,
        cfg.name,
        cfg.group,
        resolved,
        str(run_dir),
    )
    if record:
        device = workers.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        record.start(resolved, command_line(sys.argv), resumed, device=name)
    metrics: dict[str, float] = {}
    try:
        while run.epoch < cfg.trainer.epochs:
            t0 = time.perf_counter()
            metrics = train_epoch(run, cfg.trainer.max_steps)
            t1 = time.perf_counter()
            stopped = cfg.trainer.max_steps is not None and run.step >= cfg.trainer.max_steps
            if not metrics:
                break
            run.epoch += 1
            last = run.epoch == cfg.trainer.epochs or stopped
            if run.epoch % cfg.trainer.eval_interval == 0 or last:
                metrics |= evaluate(run)
            t2 = time.perf_counter()
            metrics |= {
                "epoch": run.epoch,
                "step": run.step,
                "lr": run.optimizer.param_groups[0]["lr"],
                "train_seconds": t1 - t0,
            }
            if workers.is_main:
                logger.log(metrics, step=run.step)
                record.log_epoch(metrics)
                record.add_phase_time("train", t1 - t0)
                record.add_phase_time("eval", t2 - t1)
                print(
                    " ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in metrics.items()
                    ),
                    flush=True,
                )
                if run.epoch % cfg.trainer.checkpoint_interval == 0 and not stopped:
                    save_checkpoint(ckpt_path, run.state_dict())
                    record.add_phase_time("checkpoint", time.perf_counter() - t2)
                record.save()
            if stopped:
                break
    except BaseException as err:
        if record:
            record.finish("failed", error=f"{type(err).__name__}: {err}")
        logger.finish(exit_code=1)
        raise
    if not metrics and record and record.metrics():  # resumed a run that had already finished
        metrics = record.metrics()[-1]
    summary = {**metrics, "peak_memory_mb": peak_memory_mb(workers.device)}
    if record:
        record.data["peak_memory_mb"] = summary["peak_memory_mb"]
        record.finish("completed", summary=summary)
        print(
            f"done: {cfg.name} "
            + " ".join(f"{k}={v:.4g}" for k, v in summary.items() if isinstance(v, float))
        )
    logger.finish()
    return summary


def lost_worker(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because a peer died, hung or was unreachable
    (gloo and NCCL raise ``DistError``s, or plain ``RuntimeError``s from inside DDP's backward)."""
    if isinstance(err, torch.distributed.DistError):
        return True
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    pattern = r"gloo|nccl|connection (closed|reset)|timed out|timeout|broken pipe"
    return re.search(pattern, str(err), re.IGNORECASE) is not None


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: user mistakes and divergence end with one line and exit status 2/1."""
    try:
        summary = train(cfg)
    except (ValueError, FileNotFoundError) as err:  # ConfigError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Diverged as err:
        print(f"error: {err}; stopped (an earlier checkpoint, if any, is kept)", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return None  # the record says "failed"; the sweep goes on with its next job
        sys.exit(1)
    except RuntimeError as err:  # torch.distributed.DistError is one
        if not lost_worker(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(
            f"error: lost contact with another worker ({type(err).__name__}: {first}); "
            "stopped (the last checkpoint is kept; resume=true continues)",
            file=sys.stderr,
        )
        sys.exit(1)
    finally:
        teardown_workers()
    return summary.get("test_acc", summary.get("test_loss"))


if __name__ == "__main__":
    main()

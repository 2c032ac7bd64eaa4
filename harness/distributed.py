"""Workers and devices: one process, or many under ``torchrun`` (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.optim.optimizer import register_optimizer_step_post_hook


@dataclass(frozen=True)
class Workers:
    """This process's place among the data-parallel workers."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes records, checkpoints and W&B."""
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → this worker's GPU when CUDA is usable, else the CPU; otherwise as named."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name!r} but CUDA is not available; use auto or cpu")
    return torch.device(name)


def export_slurm_environment() -> None:
    """In a task started by submitit (Hydra's submitit launcher) rather than torchrun: derive RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from the Slurm job."""
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


FAULT_ENV = "EVA_FAULT_AT_STEP"
"""Fault injection for tests: ``RANK:STEP`` or ``RANK:STEP:MODE`` makes worker ``RANK`` fail
right after its ``STEP``-th optimizer step in this process. ``MODE`` ``exit`` (default) ends the
process at once with status :data:`FAULT_EXIT_CODE`, without any cleanup, as a killed worker;
``stop`` freezes it (``SIGSTOP`` to itself), as a hung machine whose connections stay open."""
FAULT_EXIT_CODE = 43


def install_fault(rank: int) -> None:
    """Arm :data:`FAULT_ENV` for this worker, if it names this rank: a global optimizer-step
    post-hook (``torch.optim.optimizer.register_optimizer_step_post_hook``) counts the steps,
    so the training loop itself carries no test code."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    fields = spec.split(":")
    if len(fields) not in (2, 3) or not all(f.isdigit() for f in fields[:2]):
        raise ValueError(f"{FAULT_ENV} must be RANK:STEP or RANK:STEP:exit|stop, got {spec!r}")
    mode = fields[2] if len(fields) == 3 else "exit"
    if mode not in ("exit", "stop"):
        raise ValueError(f"{FAULT_ENV} must be RANK:STEP or RANK:STEP:exit|stop, got {spec!r}")
    if int(fields[0]) != rank:
        return
    at_step, steps = int(fields[1]), [0]

    def fail(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        steps[0] += 1
        if steps[0] == at_step:
            print(f"{FAULT_ENV}: worker {rank} fails ({mode}) after step {at_step}", flush=True)
            if mode == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            os._exit(FAULT_EXIT_CODE)

    register_optimizer_step_post_hook(fail)


def setup_workers(device: str = "auto", timeout_s: float = 300.0) -> Workers:
    """Read ``torchrun``'s (or Slurm's) environment and join the process group when there are
    several workers.

    ``timeout_s`` bounds the rendezvous and every collective of the process group (gloo
    honours it, tested in ``tests/integration/test_faults.py``; for NCCL it is the watchdog's
    limit): a worker that dies makes the others' next collective fail, at once if its
    connections close, after ``timeout_s`` seconds if it hangs, instead of hanging forever.
    :data:`FAULT_ENV` (tests only) makes one worker fail on purpose.
    """
    if "RANK" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        export_slurm_environment()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    install_fault(rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return Workers(rank, world, local_rank, dev)


def mean_across_workers(values: torch.Tensor) -> torch.Tensor:
    """Average a tensor over workers (identity for one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def teardown_workers() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

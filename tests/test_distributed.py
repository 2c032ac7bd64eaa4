"""N processes on half the batch each == 1 process on the whole batch (gloo, CPU, float64).

Every worker runs every registered preconditioner (and plain SGD) under
``DistributedDataParallel``; statistics go through the default reducer, which all-reduces them.
The model has no BatchNorm: BN normalises with per-worker batch statistics, which makes N workers
differ from one process by construction (SyncBatchNorm aside).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import eva

STEPS = 4
GLOBAL_BATCH = 8
CONFIGS: dict[str, dict] = {
    "sgd": {"cls": "eva", "enabled": False},
    "eva": {"cls": "eva"},
    "eva_f": {"cls": "eva_f"},
    "eva_s": {"cls": "eva_s"},
    "kfac": {"cls": "kfac", "update_interval": 2},
    "kfac_expand": {"cls": "kfac", "update_interval": 1, "conv_factors": "expand"},
    "foof": {"cls": "foof", "update_interval": 2, "running_avg": 0.9},
    "foof_rank1": {"cls": "foof", "update_interval": 1, "rank": 1},
    "eva_gradnorm": {"cls": "eva_gradnorm"},
    "shampoo": {"cls": "shampoo", "update_interval": 2},
    "mfac": {"cls": "mfac", "num_grads": 3},
}


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Tanh(),
        nn.Conv2d(4, 4, (2, 3), bias=False), nn.Tanh(), nn.Flatten(),
        nn.Linear(4 * 3 * 1, 5), nn.Tanh(), nn.Linear(5, 3),
    ).double()  # fmt: skip


def train(config: dict, rank: int, world: int) -> list[torch.Tensor]:
    """Train ``STEPS`` steps on this rank's share of a fixed global batch stream."""
    torch.manual_seed(0)
    model = _model()
    net = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    kwargs = {k: v for k, v in config.items() if k != "cls"}
    pre = eva.PRECONDITIONERS[config["cls"]](model, opt, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x = torch.randn(GLOBAL_BATCH, 3, 8, 6, generator=gen, dtype=torch.float64)
        y = torch.randn(GLOBAL_BATCH, 3, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        F.mse_loss(net(x.chunk(world)[rank]), y.chunk(world)[rank]).backward()
        pre.step()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _worker(rank: int, world: int, port: int, out: str, names: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {name: train(CONFIGS[name], rank, world) for name in names}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    names = [n for n, c in CONFIGS.items() if c["cls"] in eva.PRECONDITIONERS]
    out = Path(tmp_path_factory.mktemp("dist")) / "params.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(out), names), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


@pytest.mark.skipif(sys.platform == "win32", reason="gloo multiprocess test")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_processes_equal_one(name: str, two_process_results: dict) -> None:
    if CONFIGS[name]["cls"] not in eva.PRECONDITIONERS:
        pytest.skip(f"{CONFIGS[name]['cls']} not registered")
    single = train(CONFIGS[name], rank=0, world=1)
    for got, want in zip(two_process_results[name], single, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)

"""eva/comm.py: the reducers, on 2 gloo processes (CPU), and N processes == 1 process.

All multi-process work runs in one ``torch.multiprocessing.spawn`` (module-scoped fixture); the
workers only compute and save, the assertions run here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import eva
from eva.comm import LocalReducer, TorchDistributedReducer, default_reducer
from tests.helpers import STABLE_KWARGS, build, image_batches, make_model, registry_names, sgd

WORLD = 2
BUCKETS = {"one-bucket-per-dtype": 32 << 20, "tiny": 16}
# Every registered preconditioner, plus variants with other statistics paths, plus plain SGD.
CASES: dict[str, tuple[str, dict]] = {name: (name, {}) for name in registry_names()} | {
    "sgd": ("eva", {"enabled": False}),
    "kfac_expand": ("kfac", {"conv_factors": "expand", "update_interval": 1}),
    "foof_rank1": ("foof", {"rank": 1}),
}


def reducer_inputs(rank: int) -> list[torch.Tensor]:
    """Mixed shapes and dtypes (float32/float64), including a 0-dim and a non-contiguous view."""
    g = torch.Generator().manual_seed(100 + rank)
    specs = [
        ((3,), torch.float32), ((2, 3), torch.float64), ((), torch.float32),
        ((4, 1, 2), torch.float64), ((5, 5), torch.float32), ((1,), torch.float64),
        ((7,), torch.float64),
    ]  # fmt: skip
    tensors = [torch.randn(shape, generator=g, dtype=dtype) for shape, dtype in specs]
    tensors.append(torch.randn(4, 3, generator=g, dtype=torch.float32).t())  # non-contiguous
    return tensors


def _train(case: str, rank: int, distributed: bool) -> dict[str, torch.Tensor]:
    """3 steps on the same global batches: DDP on half of each batch per rank, or all of it."""
    name, extra = CASES[case]
    cls = eva.PRECONDITIONERS[name]
    kwargs = {"update_interval": 2, **STABLE_KWARGS.get(name, {}), **extra}
    model = make_model()
    optimizer = sgd(model)
    if distributed:
        net = DistributedDataParallel(model)
        pre = build(cls, net, optimizer, **kwargs)
    else:
        net = model
        pre = build(cls, net, optimizer, reducer=LocalReducer(), **kwargs)
    for x, y in image_batches(3, batch=8):
        if distributed:
            local = slice(rank * 8 // WORLD, (rank + 1) * 8 // WORLD)
            x, y = x[local], y[local]
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        pre.step()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results: dict = {
            "default_reducer": type(default_reducer()).__name__,
            "world_size": TorchDistributedReducer().world_size,
            "reduced": {},
            "train": {},
        }
        all_reduce = dist.all_reduce
        for label, bucket_bytes in BUCKETS.items():
            calls = []

            def counting(tensor, *args, _calls=calls, **kwargs):
                _calls.append(tensor.numel())
                return all_reduce(tensor, *args, **kwargs)

            tensors = reducer_inputs(rank)
            dist.all_reduce = counting
            try:
                TorchDistributedReducer(bucket_bytes=bucket_bytes).average(tensors)
            finally:
                dist.all_reduce = all_reduce
            results["reduced"][label] = {"tensors": tensors, "calls": len(calls)}
        for case in CASES:
            results["train"][case] = {
                "distributed": _train(case, rank, distributed=True),
                "single": _train(case, rank, distributed=False),
            }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("comm")
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_default_reducer_is_local_without_process_group():
    assert not (dist.is_available() and dist.is_initialized())
    reducer = default_reducer()
    assert isinstance(reducer, LocalReducer)
    assert reducer.world_size == 1
    t = torch.arange(3.0)
    reducer.average([t])
    assert torch.equal(t, torch.arange(3.0))


def test_default_reducer_in_process_group(spawned):
    for results in spawned:
        assert results["default_reducer"] == "TorchDistributedReducer"
        assert results["world_size"] == WORLD


@pytest.mark.parametrize("label", list(BUCKETS))
def test_reducer_averages_exactly(spawned, label):
    inputs = [reducer_inputs(r) for r in range(WORLD)]
    expected = [(a + b) / 2 for a, b in zip(*inputs)]  # one addition: exact on every rank
    for rank, results in enumerate(spawned):
        reduced = results["reduced"][label]
        assert len(reduced["tensors"]) == len(expected)
        for i, (got, want) in enumerate(zip(reduced["tensors"], expected)):
            assert got.dtype == want.dtype and got.shape == want.shape, (rank, i)
            assert torch.equal(got, want), (rank, i, got, want)
        if label == "tiny":
            assert reduced["calls"] >= len(expected) - 1, "tiny bucket_bytes should split buckets"
        else:
            assert reduced["calls"] == 2, "one fused all-reduce per dtype"


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one(spawned, name):
    single = spawned[0]["train"][name]["single"]
    for rank, results in enumerate(spawned):
        got = results["train"][name]["distributed"]
        for key, want in single.items():
            torch.testing.assert_close(
                got[key],
                want,
                rtol=1e-10,
                atol=1e-13,
                msg=lambda m, k=key, r=rank: f"rank {r} {k}: {m}",
            )
    # both ranks hold bit-identical parameters
    for key, value in spawned[0]["train"][name]["distributed"].items():
        assert torch.equal(value, spawned[1]["train"][name]["distributed"][key]), key

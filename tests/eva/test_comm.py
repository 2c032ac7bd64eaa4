"""eva/comm.py: the reducers, overlapped averaging, on 2 gloo processes (CPU), and N processes
== 1 process, with statistics averaged in ``step()`` or during the backward pass (``overlap_comm``).

All multi-process work runs in one ``torch.multiprocessing.spawn`` (module-scoped fixture); the
workers only compute and save, the assertions run here. The bookkeeping of the overlap in one
process, with a fake two-worker reducer: ``test_comm_overlap.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

import eva
from eva.comm import (
    LocalReducer,
    TorchDistributedReducer,
    Work,
    default_reducer,
)
from eva.layers import find_layers
from tests.helpers import (
    STABLE_KWARGS,
    BatchNormCNN,
    TinyCNN,
    build,
    image_batches,
    in_backward,
    make_model,
    registry_names,
    sgd,
)

WORLD = 2
BUCKETS = {"one-bucket-per-dtype": 32 << 20, "tiny": 16}


class CheckpointedCNN(TinyCNN):
    """TinyCNN with conv2 → fc1 in a non-reentrant activation checkpoint (recomputed in the
    backward pass, firing those layers' forward hooks a second time)."""

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv1(x))
        x = checkpoint(self._segment, x, use_reentrant=False)
        return self.fc2(x)

    def _segment(self, x: Tensor) -> Tensor:
        return torch.relu(self.fc1(torch.relu(self.conv2(x)).flatten(1)))


# case -> (preconditioner, extra options, loop). Loops: "plain" (one forward/backward per step),
# "accumulate" (two micro-batches per step), "checkpoint" (CheckpointedCNN), "batchnorm"
# (BatchNormCNN; compares parameters only, DDP broadcasts rank 0's running statistics).
CASES: dict[str, tuple[str, dict, str]] = {
    name: (name, {}, "plain") for name in registry_names()
} | {
    "sgd": ("eva", {"enabled": False}, "plain"),
    "kfac_expand": ("kfac", {"conv_factors": "expand", "update_interval": 1}, "plain"),
    "foof_rank1": ("foof", {"rank": 1}, "plain"),
    "eva_accumulate": ("eva", {"update_interval": 1}, "accumulate"),
    "kfac_accumulate": ("kfac", {}, "accumulate"),
    "eva_f_accumulate": ("eva_f", {"update_interval": 1}, "accumulate"),
    "eva_checkpoint": ("eva", {"update_interval": 1}, "checkpoint"),
    "foof_checkpoint": ("foof", {"update_interval": 1}, "checkpoint"),
    "eva_batchnorm": ("eva", {"update_interval": 1}, "batchnorm"),
}
SPY_NAMES = ["eva", "eva_f", "kfac", "foof", "shampoo"]


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


def _train(case: str, rank: int, distributed: bool, overlap: bool = True) -> dict[str, Tensor]:
    """3 steps on the same global batches: DDP on half of each batch per rank, or all of it."""
    name, extra, loop = CASES[case]
    cls = eva.PRECONDITIONERS[name]
    kwargs = {"update_interval": 2, **STABLE_KWARGS.get(name, {}), **extra}
    builders = {"checkpoint": CheckpointedCNN, "batchnorm": BatchNormCNN}
    model = make_model(builders.get(loop, TinyCNN))
    optimizer = sgd(model)
    if distributed:
        net: nn.Module = DistributedDataParallel(model)
        pre = build(cls, net, optimizer, overlap_comm=overlap, **kwargs)
    else:
        net = model
        pre = build(cls, net, optimizer, reducer=LocalReducer(), **kwargs)
    micro = 2 if loop == "accumulate" else WORLD if loop == "batchnorm" and not distributed else 1
    for x, y in image_batches(3, batch=8):
        if distributed:
            local = slice(rank * 8 // WORLD, (rank + 1) * 8 // WORLD)
            x, y = x[local], y[local]
        optimizer.zero_grad()
        for xs, ys in zip(x.chunk(micro), y.chunk(micro), strict=True):
            (F.cross_entropy(net(xs), ys) / micro).backward()
        pre.step()
        optimizer.step()
    if loop == "batchnorm":
        zero = {name.removeprefix("module.") for name in pre.capture.zero_grad_means.zero}  # type: ignore[union-attr]
        assert zero == {"conv1", "conv2", "fc1"}  # their ā never read
        return {k: v.detach().clone() for k, v in model.named_parameters()}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _LoggedWork:
    def __init__(self, work: Work, log: list[str]) -> None:
        self.work, self.log = work, log

    def wait(self) -> None:
        self.log.append("wait")
        self.work.wait()


class SpyReducer(TorchDistributedReducer):
    """The all-reduce reducer, logging each launch (inside a backward pass or not) and wait."""

    def __init__(self, log: list[str]) -> None:
        super().__init__(bucket_bytes=1)  # every tensor its own bucket: one launch per statistic
        self.log = log

    def average_async(self, tensors: list[Tensor]) -> Work:
        self.log.append("launch-in-backward" if in_backward() else "launch")
        return _LoggedWork(super().average_async(tensors), self.log)


def _spy(name: str, rank: int, overlap: bool) -> list[str]:
    """2 refresh steps under DDP; the events of the reducer and of the loop, in order."""
    log: list[str] = []
    model = make_model()
    optimizer = sgd(model)
    net = DistributedDataParallel(model)
    pre = build(
        eva.PRECONDITIONERS[name], net, optimizer, update_interval=1, overlap_comm=overlap,
        reducer=SpyReducer(log), **STABLE_KWARGS.get(name, {}),
    )  # fmt: skip
    for x, y in image_batches(2, batch=8):
        x = x[rank * 4 : (rank + 1) * 4].requires_grad_()
        x.register_hook(lambda g: log.append("input-grad"))  # the backward pass's last step
        optimizer.zero_grad()
        F.cross_entropy(net(x), y[rank * 4 : (rank + 1) * 4]).backward()
        log.append("step")
        pre.step()
        log.append("stepped")
        optimizer.step()
    return log


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
                "overlap": _train(case, rank, distributed=True, overlap=True),
                "step": _train(case, rank, distributed=True, overlap=False),
                "single": _train(case, rank, distributed=False),
            }
        results["spy"] = {
            (name, overlap): _spy(name, rank, overlap)
            for name in SPY_NAMES
            for overlap in (True, False)
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


@pytest.mark.parametrize("mode", ["overlap", "step"])
@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one(spawned, name, mode):
    """``mode``: statistics averaged during the backward pass (overlap_comm) or in step()."""
    single = spawned[0]["train"][name]["single"]
    for rank, results in enumerate(spawned):
        got = results["train"][name][mode]
        for key, want in single.items():
            torch.testing.assert_close(
                got[key],
                want,
                rtol=1e-10,
                atol=1e-13,
                msg=lambda m, k=key, r=rank: f"rank {r} {k}: {m}",
            )
    # both ranks hold bit-identical parameters
    for key, value in spawned[0]["train"][name][mode].items():
        assert torch.equal(value, spawned[1]["train"][name][mode][key]), key


@pytest.mark.parametrize("name", list(CASES))
def test_overlap_gives_the_step_time_numbers(spawned, name):
    """With two workers the all-reduce adds two numbers, so where it runs changes no bit."""
    for results in spawned:
        runs = results["train"][name]
        for key, value in runs["step"].items():
            assert torch.equal(runs["overlap"][key], value), key


def _statistic_count(name: str) -> int:
    """Statistics per step of ``name`` on TinyCNN (4 layers)."""
    return len(find_layers(make_model())) * len(eva.PRECONDITIONERS[name].statistics_needed)


def _split_steps(log: list[str]) -> list[tuple[list[str], list[str]]]:
    """``[(events before step(), events inside step())]`` per step of a spy log."""
    steps, current = [], []
    for event in log:
        if event == "stepped":
            i = current.index("step")
            steps.append((current[:i], current[i + 1 :]))
            current = []
        else:
            current.append(event)
    return steps


@pytest.mark.parametrize("name", SPY_NAMES)
def test_overlap_launches_all_reduces_inside_backward(spawned, name):
    """overlap_comm: every statistic's all-reduce starts during the backward pass, before the
    last gradient (the input's) is computed; step() only waits. Without it, all start in step().
    """
    per_step = _statistic_count(name)  # bucket_bytes=1: one all-reduce per statistic
    for results in spawned:
        for overlap in (True, False):
            log = results["spy"][(name, overlap)]
            steps = _split_steps(log)
            assert len(steps) == 2, log
            for backward, step in steps:
                if overlap:
                    want_backward = ["launch-in-backward"] * per_step + ["input-grad"]
                    want_step = ["wait"] * per_step
                else:
                    want_backward = ["input-grad"]
                    want_step = ["launch"] * per_step + ["wait"] * per_step
                assert backward == want_backward, (overlap, log)
                assert step == want_step, (overlap, log)

"""eva/comm.py in one process: the bookkeeping of overlapped averaging (when a layer's statistics
are sent, sent again, or left for ``step()``), with a fake reducer for two identical workers that
makes every launch observable; the reducers' fallbacks and ``OverlappedAverage``'s order. The
same on 2 gloo processes: ``test_comm.py``."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import eva
from eva.comm import LocalReducer, OverlappedAverage, Work, start_average
from tests.helpers import (
    STABLE_KWARGS,
    STAT_NAMES,
    TinyMLP,
    build,
    in_backward,
    make_model,
    sgd,
    vector_batches,
)


class FakeWork:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def wait(self) -> None:
        self.log.append("wait")


class FakeTwoWorkers:
    """Two workers holding the same statistics: the average leaves them as they are. Logs
    every launch and wait (``average`` counts as a launch and a wait)."""

    world_size = 2

    def __init__(self, bucket_bytes: int = 1, asynchronous: bool = True) -> None:
        self.bucket_bytes = bucket_bytes
        self.log: list[str] = []
        self.buckets: list[list[Tensor]] = []
        if not asynchronous:
            self.average_async = None  # type: ignore[assignment]  # start_average falls back

    def average(self, tensors: list[Tensor]) -> None:
        self.log += ["launch-in-backward" if in_backward() else "launch", "wait"]

    def average_async(self, tensors: list[Tensor]) -> Work:
        self.log.append("launch-in-backward" if in_backward() else "launch")
        self.buckets.append(list(tensors))
        return FakeWork(self.log)


class SharedFC2(TinyMLP):
    """fc2 applied twice: two forward calls (and two output gradients) of one layer per step."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class CheckpointedMLP(TinyMLP):
    """fc1 → fc2 in an activation checkpoint; ``reentrant`` picks the implementation."""

    reentrant = False

    def forward(self, x: Tensor) -> Tensor:
        def segment(t: Tensor) -> Tensor:
            return F.relu(self.fc2(F.relu(self.fc1(t))))

        return self.fc3(checkpoint(segment, x, use_reentrant=self.reentrant))


class ReentrantMLP(CheckpointedMLP):
    reentrant = True


# loop -> (model builder, micro-batches per step, launches per statistic per step)
LOOPS: dict[str, tuple[Callable[[], nn.Module], int, int]] = {
    "plain": (TinyMLP, 1, 1),
    "shared_layer": (SharedFC2, 1, 1),
    "checkpoint": (CheckpointedMLP, 1, 1),
    "checkpoint_reentrant": (ReentrantMLP, 1, 1),
    "accumulate": (TinyMLP, 2, 2),  # the first micro-batch's launches are sent again
}


def _fake_run(name: str, loop: str, overlap: bool) -> tuple[dict, list[str], list]:
    builder, micro, _ = LOOPS[loop]
    reducer = FakeTwoWorkers()
    model = make_model(builder)
    optimizer = sgd(model)
    pre = build(
        eva.PRECONDITIONERS[name], model, optimizer, update_interval=2, overlap_comm=overlap,
        reducer=reducer, **STABLE_KWARGS.get(name, {}),
    )  # fmt: skip
    grads = []
    for x, y in vector_batches(3):
        x.requires_grad_(loop == "checkpoint_reentrant")
        optimizer.zero_grad()
        for xs, ys in zip(x.chunk(micro), y.chunk(micro), strict=True):
            (F.cross_entropy(model(xs), ys) / micro).backward()
        reducer.log.append("step")
        pre.step()
        grads.append([p.grad.clone() for p in model.parameters()])
        optimizer.step()
    return {"state": pre.state, "grads": grads}, reducer.log, reducer.buckets


@pytest.mark.parametrize("loop", list(LOOPS))
@pytest.mark.parametrize("name", STAT_NAMES)
def test_overlap_bookkeeping_in_one_process(name, loop):
    """Overlapped or not, the same state and gradients; with overlap every statistic leaves
    during the backward pass (sent again after a second micro-batch), none in step()."""
    (on, log_on, _), (off, log_off, _) = (_fake_run(name, loop, o) for o in (True, False))
    for a, b in zip(on["grads"], off["grads"], strict=True):
        for g, h in zip(a, b, strict=True):
            assert torch.equal(g, h)
    for layer, state in off["state"].items():
        assert state.keys() == on["state"][layer].keys()
        for key, value in state.items():
            assert torch.equal(on["state"][layer][key], value), (layer, key)
    statistics = 3 * len(eva.PRECONDITIONERS[name].statistics_needed)  # TinyMLP: 3 layers
    launches = statistics * LOOPS[loop][2]
    # update_interval=2: statistics on steps 1 and 3 only
    refresh = ["launch-in-backward"] * launches + ["step"] + ["wait"] * launches
    assert log_on == [*refresh, "step", *refresh], log_on
    step_time = ["step", "launch", "wait"]  # one call of average() with every statistic
    assert log_off == [*step_time, "step", *step_time], log_off


def test_reducer_without_async_averages_in_step():
    """The synchronous fallback: a reducer with ``average`` only is called in step(), once per
    bucket (here one: all statistics are float64), with the same result as without overlap."""
    states = []
    x, y = vector_batches(1)[0]
    for overlap in (True, False):
        reducer = FakeTwoWorkers(bucket_bytes=32 << 20, asynchronous=False)
        model = make_model(TinyMLP)
        pre = eva.Eva(model, sgd(model), reducer=reducer, overlap_comm=overlap)
        F.cross_entropy(model(x), y).backward()
        reducer.log.append("step")
        pre.step()
        assert reducer.log == ["step", "launch", "wait"]
        states.append(pre.state)
    for layer, state in states[1].items():
        for key, value in state.items():
            assert torch.equal(states[0][layer][key], value)


def test_overlap_comm_must_be_a_bool():
    model = make_model()
    with pytest.raises(ValueError, match="overlap_comm"):
        eva.Eva(model, sgd(model), overlap_comm="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "reducer, overlap, hooked",
    [
        (LocalReducer(), True, False),
        (FakeTwoWorkers(), False, False),
        (FakeTwoWorkers(), True, True),
    ],
)
def test_output_gradient_hook_only_for_overlap(reducer, overlap, hooked):
    """Eva-f needs no gradient statistics: its layers' outputs get a gradient hook only to send
    their statistics from the backward pass, i.e. with overlap and more than one worker."""
    model = make_model(TinyMLP)
    pre = eva.EvaF(model, sgd(model), reducer=reducer, overlap_comm=overlap)
    assert (pre.capture.overlap is not None) == hooked
    out = model(vector_batches(1)[0][0])
    assert bool(out._backward_hooks) == hooked


def _vec(*values: float, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.tensor(values, dtype=dtype)


def test_overlapped_average_buckets_in_the_fixed_order():
    reducer = FakeTwoWorkers(bucket_bytes=12)  # three float32 numbers
    queue = OverlappedAverage(reducer, ["c", "b", "a"])
    b, c, a = {"x": _vec(1, 2)}, {"x": _vec(3), "y": _vec(4, dtype=torch.float64)}, {"x": _vec(5)}
    queue.submit("b", b)
    assert reducer.buckets == [] and "b" in queue  # waits for "c", first in the order
    queue.submit("c", c)
    assert [[t.tolist() for t in bucket] for bucket in reducer.buckets] == [[[3.0], [1.0, 2.0]]]
    queue.submit("a", a)
    assert len(reducer.buckets) == 1  # a's bucket is not full yet
    groups = queue.finish({})
    assert list(groups) == ["c", "b", "a"] and groups["b"] is b
    assert [[t.tolist() for t in bucket] for bucket in reducer.buckets] == [
        [[3.0], [1.0, 2.0]], [[4.0]], [[5.0]],
    ]  # fmt: skip
    assert reducer.log.count("wait") == 3
    assert "a" not in queue  # finish starts the next step afresh


def test_overlapped_average_invalidate_and_finish():
    reducer = FakeTwoWorkers(bucket_bytes=4)
    queue = OverlappedAverage(reducer, ["b", "a"])
    queue.submit("b", {"x": _vec(1)})
    queue.invalidate()
    assert "b" not in queue
    queue.submit("b", {"x": _vec(2)})
    # "a" was never submitted in the backward pass: finish adds it, in order
    groups = queue.finish({"a": {"x": _vec(3)}})
    assert {k: v["x"].tolist() for k, v in groups.items()} == {"b": [2.0], "a": [3.0]}
    assert [bucket[0].tolist() for bucket in reducer.buckets] == [[1.0], [2.0], [3.0]]
    assert reducer.log.count("wait") == 3  # the discarded launch is waited for as well
    with pytest.raises(ValueError, match="already submitted"):
        queue.submit("a", {})
        queue.submit("a", {})
    with pytest.raises(ValueError, match="not in the order"):
        queue.submit("z", {})


def test_start_average_falls_back_to_average():
    reducer = FakeTwoWorkers(asynchronous=False)
    work = start_average(reducer, [_vec(1)])
    assert reducer.log == []
    work.wait()
    assert reducer.log == ["launch", "wait"]
    assert re.fullmatch(r"_Deferred", type(work).__name__)

"""Averaging of curvature statistics across data-parallel workers.

Preconditioners hand every statistic they collected in a step to a :class:`Reducer` before using it,
so that all workers compute the same update. The required interface is one method, ``average``, so
that another collective library (e.g. Horovod, once it builds against current PyTorch) is a short
addition; a reducer that can also *start* an average and finish it later (:class:`AsyncReducer`,
one more method) lets the statistics travel while the backward pass still runs
(:class:`OverlappedAverage`). A reducer without it falls back to averaging synchronously when
the result is needed (:func:`start_average`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, cast

import torch
import torch.distributed as dist
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

DEFAULT_BUCKET_BYTES = 32 << 20
"""Upper bound on one fused all-reduce unless a reducer states its own ``bucket_bytes``."""


class Reducer(Protocol):
    """Averages tensors across workers, in place."""

    @property
    def world_size(self) -> int:
        """Number of workers."""
        ...

    def average(self, tensors: list[Tensor]) -> None:
        """Replace every tensor by its mean over all workers."""
        ...


class Work(Protocol):
    """An average in flight (the handle :meth:`AsyncReducer.average_async` returns)."""

    def wait(self) -> None:
        """Return once the tensors handed to ``average_async`` hold their means.

        On a GPU this may only make the current stream wait (no host synchronisation).
        """
        ...


class AsyncReducer(Reducer, Protocol):
    """A :class:`Reducer` that can start an average and finish it later."""

    bucket_bytes: int
    """Upper bound on the bytes fused into one collective."""

    def average_async(self, tensors: list[Tensor]) -> Work:
        """Start replacing every tensor by its mean over all workers.

        The tensors must be neither read nor written until the returned work's ``wait()``.
        """
        ...


class _Deferred:
    """The synchronous fallback: ``reducer.average(tensors)`` when waited on."""

    def __init__(self, reducer: Reducer, tensors: list[Tensor]) -> None:
        self.reducer, self.tensors = reducer, tensors

    def wait(self) -> None:
        self.reducer.average(self.tensors)


def start_average(reducer: Reducer, tensors: list[Tensor]) -> Work:
    """Start averaging ``tensors`` in place with ``reducer.average_async`` if the reducer has it;
    otherwise return a work that runs the synchronous ``reducer.average`` when waited on."""
    start = getattr(reducer, "average_async", None)
    if start is None:
        return _Deferred(reducer, tensors)
    return cast(AsyncReducer, reducer).average_async(tensors)


class LocalReducer:
    """One process: nothing to average."""

    world_size = 1

    def average(self, tensors: list[Tensor]) -> None:
        """No-op."""


class _AllReduceWork:
    """Flat buffers being summed by ``dist.all_reduce(async_op=True)``; ``wait`` divides by the
    world size and copies the means back into the original tensors."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.parts: list[tuple[dist.Work, Tensor, list[Tensor]]] = []

    def wait(self) -> None:
        for work, flat, tensors in self.parts:
            work.wait()
            flat.div_(self.world)
            for t, reduced in zip(tensors, _unflatten_dense_tensors(flat, tensors), strict=True):
                t.copy_(reduced)
        self.parts.clear()


class TorchDistributedReducer:
    """``torch.distributed`` all-reduce, fusing tensors into flat buckets of one dtype and device.

    Implements :class:`AsyncReducer`: :meth:`average_async` launches the all-reduces with
    ``async_op=True`` and returns at once.

    Args:
        group: Process group (default: the world).
        bucket_bytes: Upper bound on one fused all-reduce (default 32 MiB).
    """

    def __init__(
        self, group: dist.ProcessGroup | None = None, bucket_bytes: int = DEFAULT_BUCKET_BYTES
    ) -> None:
        self.group = group
        self.bucket_bytes = bucket_bytes

    @property
    def world_size(self) -> int:
        """Number of processes in the group."""
        return dist.get_world_size(self.group)

    def _buckets(self, tensors: list[Tensor]) -> list[list[Tensor]]:
        buckets: dict[tuple[torch.dtype, torch.device], list[list[Tensor]]] = {}
        for t in tensors:
            chain = buckets.setdefault((t.dtype, t.device), [[]])
            if chain[-1] and sum(x.nbytes for x in chain[-1]) + t.nbytes > self.bucket_bytes:
                chain.append([])
            chain[-1].append(t)
        return [b for chain in buckets.values() for b in chain]

    def average_async(self, tensors: list[Tensor]) -> Work:
        """Launch one asynchronous all-reduce (sum) per dtype and device of ``tensors``, each on
        a flattened copy; the returned work's ``wait`` divides by the world size and copies back.
        The caller bounds the size (see :meth:`average` and :class:`OverlappedAverage`)."""
        groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        pending = _AllReduceWork(self.world_size)
        for group in groups.values():
            flat = _flatten_dense_tensors(group)
            work = dist.all_reduce(flat, group=self.group, async_op=True)
            pending.parts.append((cast(dist.Work, work), flat, group))
        return pending

    def average(self, tensors: list[Tensor]) -> None:
        """All-reduce (sum) each bucket, divide by the world size, copy back."""
        works = [self.average_async(bucket) for bucket in self._buckets(tensors)]
        for work in works:
            work.wait()


class OverlappedAverage:
    """Averages named groups of tensors across workers as soon as each group is ready.

    A group (e.g. one layer's statistics, ``{key: tensor}``) is :meth:`submit`-ted once it is
    complete, typically from a backward hook. Groups join buckets in the fixed ``order`` given
    here, whatever order they are submitted in, so every worker forms the same buckets and
    launches the same collectives in the same sequence (as DDP's gradient buckets do); a group
    submitted ahead of its turn waits for those before it. A bucket (per dtype and device) that
    reaches the reducer's ``bucket_bytes`` is started at once (:func:`start_average`), while the
    backward pass goes on. :meth:`finish` adds the remaining groups, starts every partial
    bucket, waits for all work and returns the averaged groups.

    :meth:`invalidate` is for a group that receives new data after it was submitted (a second
    micro-batch, a recomputed forward): everything submitted so far is dropped and must be
    submitted again. Its collectives still complete (:meth:`finish` waits for them) but their
    results are discarded. Every worker must submit and invalidate at the same points, which
    holds when all of them run the same forward and backward passes, as DDP requires.

    Args:
        reducer: Averages the buckets; its ``bucket_bytes`` (default
            :data:`DEFAULT_BUCKET_BYTES`) bounds a bucket.
        order: The names of all groups, in the order their buckets are formed (for layers: the
            reverse of the forward order, which is the order the backward pass reaches them).
    """

    def __init__(self, reducer: Reducer, order: Sequence[str]) -> None:
        self.reducer = reducer
        self.order = list(order)
        self._known = set(self.order)
        self.bucket_bytes: int = getattr(reducer, "bucket_bytes", DEFAULT_BUCKET_BYTES)
        self._reset()
        self._works: list[Work] = []

    def _reset(self) -> None:
        self._groups: dict[str, Mapping[str, Tensor]] = {}
        self._next = 0  # position in order of the next group to join a bucket
        self._open: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        self._open_bytes: dict[tuple[torch.dtype, torch.device], int] = {}

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` was submitted (since the last :meth:`invalidate` / :meth:`finish`)."""
        return name in self._groups

    def submit(self, name: str, group: Mapping[str, Tensor]) -> None:
        """Hand over a complete group; it must not change until :meth:`finish` returns."""
        self._check(name)
        self._groups[name] = group
        while self._next < len(self.order) and self.order[self._next] in self._groups:
            self._add(self._groups[self.order[self._next]])
            self._next += 1

    def _check(self, name: str) -> None:
        if name not in self._known:
            raise ValueError(f"group {name!r} is not in the order given at construction")
        if name in self._groups:
            raise ValueError(f"group {name!r} was already submitted")

    def _add(self, group: Mapping[str, Tensor]) -> None:
        for t in group.values():
            key = (t.dtype, t.device)
            bucket = self._open.setdefault(key, [])
            if bucket and self._open_bytes[key] + t.nbytes > self.bucket_bytes:
                self._launch(key)
                bucket = self._open.setdefault(key, [])
            bucket.append(t)
            self._open_bytes[key] = self._open_bytes.get(key, 0) + t.nbytes
            if self._open_bytes[key] >= self.bucket_bytes:
                self._launch(key)

    def _launch(self, key: tuple[torch.dtype, torch.device]) -> None:
        bucket = self._open.pop(key)
        self._open_bytes.pop(key)
        self._works.append(start_average(self.reducer, bucket))

    def invalidate(self) -> None:
        """Drop every group submitted so far (their collectives finish, results unused)."""
        self._reset()

    def finish(self, rest: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Mapping[str, Tensor]]:
        """Submit ``rest`` (groups not yet submitted), start what is left in order, wait for all
        work, and return every group, averaged, by name (in ``order``)."""
        for name, group in rest.items():
            self._check(name)
            self._groups[name] = group
        for name in self.order[self._next :]:
            if name in self._groups:
                self._add(self._groups[name])
        for key in list(self._open):
            self._launch(key)
        works, self._works = self._works, []
        for work in works:
            work.wait()
        groups = {name: self._groups[name] for name in self.order if name in self._groups}
        self._reset()
        return groups


def default_reducer() -> Reducer:
    """The reducer for the current process: all-reduce when a process group of size > 1 exists."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchDistributedReducer()
    return LocalReducer()

"""Averaging of curvature statistics across data-parallel workers.

Preconditioners hand every statistic they collected in a step to a :class:`Reducer` before using it,
so that all workers compute the same update. The interface is one method, so that another
collective library (e.g. Horovod, once it builds against current PyTorch) is a short addition.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


class Reducer(Protocol):
    """Averages tensors across workers, in place."""

    @property
    def world_size(self) -> int:
        """Number of workers."""
        ...

    def average(self, tensors: list[Tensor]) -> None:
        """Replace every tensor by its mean over all workers."""
        ...


class LocalReducer:
    """One process: nothing to average."""

    world_size = 1

    def average(self, tensors: list[Tensor]) -> None:
        """No-op."""


class TorchDistributedReducer:
    """``torch.distributed`` all-reduce, fusing tensors into flat buckets of one dtype and device.

    Args:
        group: Process group (default: the world).
        bucket_bytes: Upper bound on one fused all-reduce (default 32 MiB).
    """

    def __init__(self, group: dist.ProcessGroup | None = None, bucket_bytes: int = 32 << 20):
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

    def average(self, tensors: list[Tensor]) -> None:
        """All-reduce (sum) each bucket, divide by the world size, copy back."""
        world = self.world_size
        for bucket in self._buckets(tensors):
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat, group=self.group)
            flat.div_(world)
            for t, reduced in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
                t.copy_(reduced)


def default_reducer() -> Reducer:
    """The reducer for the current process: all-reduce when a process group of size > 1 exists."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchDistributedReducer()
    return LocalReducer()

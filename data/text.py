"""A byte-level text corpus that needs no download: the Python standard library's own sources.

:func:`load_pystdlib` reads the ``.py`` files of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``) and returns a :class:`TextSplits`:

- **files**: every ``*.py`` below the root, in sorted order of their ``/``-separated relative
  paths, except those inside a folder named in :data:`SKIPPED_FOLDERS`: installed packages
  (``site-packages``, ``dist-packages``), the regression tests (``test``, ``tests``: large, and
  full of deliberately odd code), IDLE and lib2to3 (applications and their fixtures rather than
  library code), ``encodings`` (machine-generated codec tables) and ``__pycache__``;
- **split by file**: a file goes to validation when the CRC-32 of its relative path, modulo
  10,000, is below ``val_fraction · 10,000`` (about 5% of the files by default). The rule depends
  on nothing but the path, so it is the same on every machine, Python build and run;
- **bytes**: each split's files are concatenated in that order with one NUL byte (0, which
  source files do not contain) between files, as one uint8 tensor; vocabulary 256;
- **caps**: ``max_train_bytes`` / ``max_val_bytes`` keep only the first that many bytes of a
  split (so the first files of the sorted order), which bounds memory and the evaluation's cost.

Loaders (:meth:`TextSplits.loaders`): training batches are windows of ``context + 1`` bytes at
random offsets (inputs: the first ``context`` bytes, targets: the ``context`` bytes after each
input byte) from a seeded CPU generator, ``steps_per_epoch`` batches to an "epoch"
(:class:`RandomWindows`, resumable through ``state_dict``); validation takes the fixed
non-overlapping windows ``[i·context, (i+1)·context]`` of the validation bytes in order
(:class:`SequentialWindows`).
"""

from __future__ import annotations

import os
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from data.epochs import SeededEpochs

__all__ = [
    "SEPARATOR",
    "SKIPPED_FOLDERS",
    "RandomWindows",
    "SequentialWindows",
    "TextSplits",
    "is_validation",
    "load_pystdlib",
    "stdlib_files",
]

SKIPPED_FOLDERS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "encodings",
     "__pycache__"}
)  # fmt: skip
"""Folders (at any depth below the root) whose files are not part of the corpus."""

SEPARATOR = 0
"""The byte between two concatenated files (NUL)."""

VOCAB_SIZE = 256


def _check_int(name: str, value: Any, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        rule = "a positive integer or null" if allow_none else "a positive integer"
        raise ValueError(f"dataset.{name} must be {rule}, got {value!r}")


def stdlib_files(root: Path) -> list[str]:
    """The corpus's files below ``root``: relative ``/``-separated paths, sorted.

    Raises:
        FileNotFoundError: ``root`` holds no ``.py`` file outside :data:`SKIPPED_FOLDERS`.
    """
    paths = []
    for folder, subfolders, names in os.walk(root):  # skipped folders are not even listed
        subfolders[:] = [name for name in subfolders if name not in SKIPPED_FOLDERS]
        relative = Path(folder).relative_to(root)
        paths += [(relative / name).as_posix() for name in names if name.endswith(".py")]
    paths.sort()
    if not paths:
        raise FileNotFoundError(
            f"pystdlib: no .py files under {root} (dataset.root; by default this interpreter's "
            "standard library, sysconfig.get_paths()['stdlib'])"
        )
    return paths


def is_validation(relative_path: str, val_fraction: float) -> bool:
    """Whether a file belongs to the validation split: CRC-32 of its path mod 10⁴ below
    ``val_fraction · 10⁴`` (deterministic everywhere, unlike Python's salted ``hash``)."""
    return zlib.crc32(relative_path.encode()) % 10_000 < val_fraction * 10_000


def _concatenate(root: Path, paths: list[str], cap: int | None) -> Tensor:
    """The files' bytes joined by :data:`SEPARATOR`, truncated to ``cap`` bytes."""
    chunks: list[bytes] = []
    size = 0
    for path in paths:
        if cap is not None and size >= cap:
            break
        if chunks:
            chunks.append(bytes([SEPARATOR]))
            size += 1
        content = (root / path).read_bytes()
        chunks.append(content)
        size += len(content)
    joined = b"".join(chunks)[:cap]
    return torch.frombuffer(bytearray(joined), dtype=torch.uint8)


class RandomWindows(SeededEpochs):
    """Training batches of random byte windows, resumable exactly.

    Every epoch draws its ``steps_per_epoch × batch_size`` window offsets at once from a CPU
    generator seeded with ``seed`` (the state at the epoch's start is what :meth:`state_dict`
    keeps, as :class:`~data.loader.TensorLoader` does), so a run restarted from a checkpoint
    continues with the same batches.

    Args:
        data: The split's bytes (uint8, 1-D), at least ``context + 1`` long.
        context: Window length the model sees.
        batch_size: Global windows per batch (split evenly over ``world_size`` ranks).
        steps_per_epoch: Batches per epoch.
        seed: Generator seed, the same on every rank. Default 0.
        rank: This process's rank. Default 0.
        world_size: Number of data-parallel processes. Default 1.

    Yields:
        ``(inputs, targets)``: int64 tensors of shape ``(batch_size / world_size, context)``,
        ``targets[:, t]`` the byte after ``inputs[:, t]``.

    Raises:
        ValueError: A bad size (the message names it).
    """

    size_key, size_unit = "num_bytes", "training bytes"

    def __init__(
        self,
        data: Tensor,
        context: int,
        batch_size: int,
        steps_per_epoch: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_int("context", context)
        _check_int("steps_per_epoch", steps_per_epoch)
        _check_batch("batch_size", batch_size, world_size, rank)
        if len(data) < context + 1:
            raise ValueError(
                f"the training text has {len(data)} bytes, fewer than dataset.context + 1 = "
                f"{context + 1} (raise dataset.max_train_bytes)"
            )
        self.data, self.context, self.batch_size = data, context, batch_size
        self.steps_per_epoch = steps_per_epoch
        self.rank, self.world_size = rank, world_size
        self._offsets = torch.arange(context + 1)
        self._start_epochs(seed)

    def __len__(self) -> int:
        """Batches per epoch (``steps_per_epoch``)."""
        return self.steps_per_epoch

    def _size(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The remaining batches of the current epoch."""
        high = len(self.data) - self.context  # the last start leaves room for context + 1 bytes
        starts = torch.randint(
            0, high, (self.steps_per_epoch, self.batch_size), generator=self._epoch_generator()
        )
        for b in range(self._batch, self.steps_per_epoch):
            local = starts[b].tensor_split(self.world_size)[self.rank]
            windows = self.data[local[:, None] + self._offsets].long()
            self._handed_out(b)
            yield windows[:, :-1], windows[:, 1:]


class SequentialWindows:
    """Evaluation batches: every non-overlapping window of a split, in order.

    Window ``i`` has inputs ``data[i·context : (i+1)·context]`` and targets one byte later, for
    ``i < (len(data) − 1) // context``; the batches hold ``batch_size`` windows (the last one
    fewer), each split evenly over ``world_size`` ranks.

    Raises:
        ValueError: A bad batch size, or a split shorter than ``context + 1`` bytes.
    """

    def __init__(
        self, data: Tensor, context: int, batch_size: int, *, rank: int = 0, world_size: int = 1
    ) -> None:
        _check_int("context", context)
        _check_batch("eval_batch_size", batch_size, world_size, rank)
        self.num_windows = (len(data) - 1) // context
        if self.num_windows < 1:
            raise ValueError(
                f"the validation text has {len(data)} bytes, fewer than dataset.context + 1 = "
                f"{context + 1} (raise dataset.max_val_bytes)"
            )
        self.data, self.context, self.batch_size = data, context, batch_size
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        """Number of batches."""
        return -(-self.num_windows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        offsets = torch.arange(self.context + 1)
        for first in range(0, self.num_windows, self.batch_size):
            count = min(self.batch_size, self.num_windows - first)
            starts = (torch.arange(first, first + count) * self.context).tensor_split(
                self.world_size
            )[self.rank]
            windows = self.data[starts[:, None] + offsets].long()
            yield windows[:, :-1], windows[:, 1:]


def _check_batch(name: str, size: int, world_size: int, rank: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % world_size:
        raise ValueError(
            f"trainer.{name} must be a positive multiple of world_size={world_size}, got {size!r}"
        )


@dataclass(frozen=True)
class TextSplits:
    """A byte-level language-modelling corpus: two byte streams and how to cut them.

    Attributes:
        name: The registry name.
        train: Training bytes (uint8, 1-D).
        test: Validation bytes (uint8, 1-D).
        context: Window length (tokens per sequence the model sees).
        steps_per_epoch: Training batches per epoch.
        train_files: Number of files in the training split (before the cap).
        test_files: Number of files in the validation split (before the cap).
    """

    name: str
    train: Tensor
    test: Tensor
    context: int
    steps_per_epoch: int
    train_files: int = 0
    test_files: int = 0

    task = "language"
    """What the training loop optimises: next-token cross-entropy over every position."""
    num_classes = VOCAB_SIZE
    """The vocabulary size (bytes)."""
    in_memory = False
    """Not samples in tensors (no ``train_subset``, ``resize`` or batch transforms)."""
    autoencoder = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input: ``(context,)`` token ids."""
        return (self.context,)

    def loaders(
        self,
        batch_size: int,
        *,
        test_batch_size: int | None = None,
        augment: bool = False,
        batch_transform: Any = None,
        resize: int | None = None,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
        num_workers: int = 0,
    ) -> tuple[RandomWindows, SequentialWindows]:
        """Training and validation loaders (the signature of
        :meth:`data.registry.DatasetSplits.loaders`; ``augment``, ``drop_last``, ``device`` and
        ``num_workers`` have no effect: batches are made on the CPU, whole windows only).

        Raises:
            ValueError: A ``batch_transform`` or ``resize`` (image options), or a bad size.
        """
        for label, value in (("batch_transform", batch_transform), ("resize", resize)):
            if value is not None:
                raise ValueError(f"{label} does not apply to text data ({self.name})")
        train = RandomWindows(
            self.train,
            self.context,
            batch_size,
            self.steps_per_epoch,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        test = SequentialWindows(
            self.test, self.context, test_batch_size or batch_size, rank=rank, world_size=world_size
        )
        return train, test


def load_pystdlib(
    root: str | Path | None = None,
    context: int = 128,
    steps_per_epoch: int = 100,
    val_fraction: float = 0.05,
    max_train_bytes: int | None = None,
    max_val_bytes: int | None = 65_537,
) -> TextSplits:
    """The standard library's ``.py`` sources as a byte-level corpus (see the module docstring).

    Args:
        root: Folder to read. Default: None (``sysconfig.get_paths()["stdlib"]``).
        context: Window length. Default 128.
        steps_per_epoch: Training batches per epoch. Default 100.
        val_fraction: Share of files (by path hash) in the validation split. Default 0.05.
        max_train_bytes: Keep at most this many training bytes; None keeps all. Default None.
        max_val_bytes: Keep at most this many validation bytes; None keeps all. Default 65,537
            (512 windows of 128).

    Raises:
        FileNotFoundError: No ``.py`` files under ``root`` (e.g. a stripped Python install).
        ValueError: An option out of range, or a split without any file.
    """
    _check_int("context", context)
    _check_int("steps_per_epoch", steps_per_epoch)
    _check_int("max_train_bytes", max_train_bytes, allow_none=True)
    _check_int("max_val_bytes", max_val_bytes, allow_none=True)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float):
        raise ValueError(f"dataset.val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"dataset.val_fraction must be a number in (0, 1), got {val_fraction!r}")
    folder = Path(root if root is not None else sysconfig.get_paths()["stdlib"]).expanduser()
    paths = stdlib_files(folder)
    val = [p for p in paths if is_validation(p, val_fraction)]
    train = [p for p in paths if not is_validation(p, val_fraction)]
    if not val or not train:
        empty = "validation" if not val else "training"
        raise ValueError(
            f"pystdlib: the {empty} split of the {len(paths)} files under {folder} is empty "
            f"(dataset.val_fraction={val_fraction})"
        )
    return TextSplits(
        "pystdlib",
        _concatenate(folder, train, max_train_bytes),
        _concatenate(folder, val, max_val_bytes),
        context,
        steps_per_epoch,
        train_files=len(train),
        test_files=len(val),
    )

"""ImageNet (ILSVRC-2012) from the usual folder layout, with the standard ResNet transforms.

Expected layout (one sub-folder per class, the same 1,000 synset names in both splits)::

    root/train/n01440764/*.JPEG
    root/val/n01440764/*.JPEG

The validation images as distributed are one flat folder; move them into class folders first
(e.g. with the widely used ``valprep.sh``). Images are decoded by worker processes of a
:class:`torch.utils.data.DataLoader` (too large to hold in memory), using
``torchvision.transforms.v2``:

* train: ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()``;
* val: ``Resize(256)`` + ``CenterCrop(224)``;
* both: to float in [0, 1], then normalised with the ImageNet mean/std.

:func:`build_imagenet_loader` wraps the DataLoader in an :class:`EpochLoader` that calls the
:class:`~torch.utils.data.distributed.DistributedSampler`'s ``set_epoch`` for you, so it is used
the same way as :class:`data.loader.TensorLoader` (one ``for`` loop per epoch).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EpochLoader",
    "build_imagenet_loader",
    "imagenet_transforms",
    "load_imagenet",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_HOW_TO_GET = (
    "download ILSVRC-2012 from https://image-net.org and arrange it as "
    "root/train/<synset>/*.JPEG and root/val/<synset>/*.JPEG"
)


def imagenet_transforms(train: bool, image_size: int = 224, resize_size: int = 256) -> Any:
    """The standard ImageNet preprocessing (torchvision ``transforms.v2``).

    Args:
        train: Random-resized crop and flip (True) or resize and center crop (False).
        image_size: Side of the square crop. Default: 224.
        resize_size: Shorter side after resizing, for evaluation. Default: 256.

    Returns:
        A ``v2.Compose`` mapping a PIL image to a normalised float32 ``(3, S, S)`` tensor.
    """
    from torchvision.transforms import v2

    if train:
        geometry = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(resize_size, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(
        [
            v2.ToImage(),
            *geometry,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def load_imagenet(
    root: str | os.PathLike[str],
    *,
    image_size: int = 224,
    resize_size: int = 256,
    val_folder: str = "val",
) -> tuple[Dataset, Dataset]:
    """The training and validation ``ImageFolder`` datasets with their transforms.

    Args:
        root: Folder holding ``train/`` and ``val/``.
        image_size: Crop size. Default: 224.
        resize_size: Evaluation resize. Default: 256.
        val_folder: Name of the validation folder. Default: ``"val"``.

    Returns:
        ``(train, val)`` :class:`torchvision.datasets.ImageFolder` datasets; ``classes`` is the
        sorted list of class folders, and both splits must have the same classes.

    Raises:
        FileNotFoundError: A split folder is missing (the message says how to get ImageNet).
        ValueError: The two splits have different class folders.
    """
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    splits = {}
    for split, train in (("train", True), (val_folder, False)):
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"ImageNet not found: looked for {folder}; {_HOW_TO_GET}")
        splits[split] = ImageFolder(
            str(folder), transform=imagenet_transforms(train, image_size, resize_size)
        )
    train_set, val_set = splits["train"], splits[val_folder]
    if train_set.classes != val_set.classes:
        raise ValueError(
            f"{root}: train has {len(train_set.classes)} class folders and {val_folder} has "
            f"{len(val_set.classes)}, or their names differ; they must match"
        )
    return train_set, val_set


class EpochLoader:
    """A DataLoader that advances its sampler's epoch on every pass.

    Args:
        loader: The wrapped DataLoader.
        sampler: Its DistributedSampler, or None for a single process.
        seed: Without a sampler, the loader's generator is reseeded with ``seed + epoch`` before
            each pass, so the order of an epoch depends only on ``(seed, epoch)``. Default: 0.

    Resuming restores the epoch only: an interrupted epoch restarts from its beginning, with the
    same order (DistributedSampler also seeds each epoch with ``seed + epoch``).
    """

    def __init__(
        self, loader: DataLoader, sampler: DistributedSampler | None, seed: int = 0
    ) -> None:
        self.loader = loader
        self.sampler = sampler
        self.seed = seed
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def epoch(self) -> int:
        """Index of the epoch the next pass belongs to."""
        return self._epoch

    def __iter__(self) -> Iterator[Any]:
        if self.sampler is not None:
            self.sampler.set_epoch(self._epoch)
        elif self.loader.generator is not None:
            self.loader.generator.manual_seed(self.seed + self._epoch)
        yield from self.loader
        self._epoch += 1

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": int}``."""
        return {"epoch": self._epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a :meth:`state_dict`."""
        self._epoch = int(state["epoch"])


def build_imagenet_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    num_workers: int = 8,
    rank: int | None = None,
    world_size: int | None = None,
    seed: int = 0,
    pin_memory: bool = True,
) -> EpochLoader:
    """A (distributed) DataLoader for an ImageNet split.

    Args:
        dataset: A dataset from :func:`load_imagenet`.
        batch_size: Samples per batch *per process*.
        train: Shuffle and drop the last incomplete batch (True), or keep the order (False).
        num_workers: Decoding worker processes. Default: 8.
        rank: This process's rank. Default: None — from ``torch.distributed`` when a process
            group is initialised, else 0.
        world_size: Number of processes; more than one shards with a
            :class:`DistributedSampler`. Default: None — as for ``rank``, else 1.
        seed: Shuffling seed (the same on every rank). Default: 0.
        pin_memory: Default: True.

    Returns:
        An :class:`EpochLoader`. Note that a DistributedSampler pads the validation split with
        repeated samples so that every rank has the same count (at most ``world_size - 1``
        duplicates).

    Raises:
        ValueError: ``batch_size``, ``num_workers`` or ``rank`` out of range.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size - 1}], got {rank}")
    sampler = (
        DistributedSampler(
            dataset,
            num_replicas=world_size,
            rank=rank,
            shuffle=train,
            seed=seed,
            drop_last=train,
        )
        if world_size > 1
        else None
    )
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        drop_last=train,
        persistent_workers=num_workers > 0,
        generator=generator,
    )
    return EpochLoader(loader, sampler, seed)

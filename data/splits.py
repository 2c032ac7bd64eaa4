"""A loaded dataset: :class:`DatasetSplits`, what :func:`data.registry.build_dataset` returns
(the splits, what a training loop needs to know about them, and their loaders)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from data.loader import BatchTransform, TensorLoader


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's train and test splits plus what a training loop needs to know about them.

    Attributes:
        name: The registry name.
        train: ``(inputs, targets)`` tensors held in memory, or a ``Dataset`` (ImageNet).
            For autoencoder data ``targets is inputs``.
        test: Same for the test split.
        num_classes: Number of classes; None for autoencoder data (targets are the inputs).
        input_shape: Shape of one input, e.g. ``(3, 32, 32)`` or ``(784,)``.
        mean: Per-channel mean the loader normalises with; None when inputs are used as they
            are (values in [0, 1], or already normalised by the dataset's transforms).
        std: Per-channel standard deviation, or None.
        classes: Class names, when known.
        crop_padding: Padding of the standard random-crop augmentation (4 for CIFAR; 0: none).
        flip: Whether random horizontal flips are part of the standard augmentation.
    """

    name: str
    train: tuple[Tensor, Tensor] | Dataset
    test: tuple[Tensor, Tensor] | Dataset
    num_classes: int | None
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None
    crop_padding: int = 0
    flip: bool = False

    @property
    def in_memory(self) -> bool:
        """True when both splits are tensors (use :class:`~data.loader.TensorLoader`)."""
        return isinstance(self.train, tuple)

    @property
    def autoencoder(self) -> bool:
        """True when the targets are the inputs."""
        return self.num_classes is None

    @property
    def task(self) -> str:
        """``"autoencode"`` (targets are the inputs) or ``"classify"``."""
        return "autoencode" if self.autoencoder else "classify"

    def loaders(
        self,
        batch_size: int,
        *,
        test_batch_size: int | None = None,
        augment: bool = True,
        batch_transform: BatchTransform | None = None,
        resize: int | None = None,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
        num_workers: int = 8,
    ) -> tuple[Any, Any]:
        """Train and test loaders: iterables of ``(inputs, targets)``, one pass per epoch.

        Args:
            batch_size: Global training batch size (split evenly over ``world_size`` ranks).
            test_batch_size: Global evaluation batch size. Default: None (``batch_size``).
            augment: Apply the dataset's standard crop/flip to training batches. Default: True.
            batch_transform: Extra per-batch hook for in-memory training data (CutMix,
                AutoAugment; see :mod:`data.loader`). Default: None.
            resize: Bilinearly upsample (or downsample) in-memory image batches, training and
                test, to ``resize × resize`` after augmentation (see
                :class:`~data.loader.TensorLoader`). Default: None (keep the size).
            seed: Shuffling/augmentation seed, the same on every rank. Default: 0.
            drop_last: Drop the last incomplete training batch. Default: True.
            rank: This process's rank. Default: 0.
            world_size: Number of data-parallel processes. Default: 1.
            device: Where in-memory data lives and batches are produced. Default: None (CPU).
            num_workers: Decoding workers for folder datasets (ImageNet). Default: 8.

        Returns:
            ``(train_loader, test_loader)``: :class:`~data.loader.TensorLoader` objects for
            in-memory data, :class:`~data.imagenet.EpochLoader` objects otherwise. Both have
            ``len()``, ``state_dict()`` and ``load_state_dict()``.

        Raises:
            ValueError: A batch size that is not a positive multiple of ``world_size``, a bad
                ``resize``, or a ``batch_transform`` or ``resize`` for a folder dataset.
        """
        test_batch_size = test_batch_size or batch_size
        if self.in_memory:
            common = dict(
                mean=self.mean,
                std=self.std,
                rank=rank,
                world_size=world_size,
                device=device,
                seed=seed,
                resize=resize,
            )
            train = TensorLoader(
                *self.train,
                batch_size,
                shuffle=True,
                drop_last=drop_last,
                crop_padding=self.crop_padding if augment else 0,
                flip=self.flip and augment,
                batch_transform=batch_transform,
                **common,
            )
            test = TensorLoader(*self.test, test_batch_size, shuffle=False, **common)
            return train, test

        from data.imagenet import build_imagenet_loader

        for label, value in (("batch_transform", batch_transform), ("resize", resize)):
            if value is not None:
                raise ValueError(f"{label} is only supported for in-memory data, not {self.name}")
        for label, size in (("batch_size", batch_size), ("test_batch_size", test_batch_size)):
            if size < 1 or size % world_size:
                raise ValueError(
                    f"{label} must be a positive multiple of world_size={world_size}, got {size}"
                )
        shared = dict(num_workers=num_workers, rank=rank, world_size=world_size, seed=seed)
        train = build_imagenet_loader(self.train, batch_size // world_size, train=True, **shared)
        test = build_imagenet_loader(
            self.test, test_batch_size // world_size, train=False, **shared
        )
        return train, test

"""From the ``dataset`` and ``trainer`` config groups to the loaders a training run iterates."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from data.loader import autoaugment_cifar10, chain, cutmix
from data.registry import build_dataset
from harness.distributed import Workers

HARNESS_KEYS = (
    "name",
    "augment",
    "cutmix",
    "autoaugment",
    "train_subset",
    "test_subset",
    "resize",
)
"""Keys of the ``dataset`` group that the harness reads; the rest go to the dataset builder."""


@dataclass
class Data:
    """Loaders and what the loop needs to know about the task."""

    train: Any
    test: Any
    task: str  # "classify", "autoencode" or "language" (next-token targets at every position)
    num_classes: int | None  # for "language": the vocabulary size
    input_shape: tuple[int, ...]  # of one input as the model receives it (after any resize)

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype of the inputs: int64 token ids for a language model, else float32."""
        return torch.int64 if self.task == "language" else torch.float32


def subset(split: tuple[torch.Tensor, torch.Tensor], size: int | None, key: str) -> tuple:
    """The first ``size`` samples of a fixed random permutation of an in-memory split.

    The permutation is seeded by the split's length only, so every run (whatever its own seed)
    trains and evaluates on the same samples; autoencoder splits (targets *are* the inputs)
    keep that identity.
    """
    inputs, targets = split
    if size is None:
        return split
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= len(inputs):
        raise ValueError(f"dataset.{key} must be an integer in [1, {len(inputs)}], got {size!r}")
    generator = torch.Generator().manual_seed(len(inputs))
    index = torch.randperm(len(inputs), generator=generator)[:size].sort().values
    picked = inputs[index]
    return picked, picked if targets is inputs else targets[index]


def check_resize(size: Any) -> int | None:
    """``dataset.resize``: None (keep the data's size) or a positive integer (square side)."""
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ValueError(f"dataset.resize must be a positive integer or null, got {size!r}")
    return size


def build_data(dataset: DictConfig, trainer: DictConfig, workers: Workers, seed: int) -> Data:
    """Load the dataset and build this worker's train/test loaders (global batch sizes).

    ``dataset.resize`` (optional, default null): bilinearly resize every training and test
    batch of in-memory image data to ``resize × resize`` pixels after augmentation, on the
    device the batches are made on (e.g. 224 to fine-tune ImageNet models on CIFAR).
    """
    options: dict[str, Any] = OmegaConf.to_container(dataset, resolve=True)  # type: ignore[assignment]
    builder_options = {k: v for k, v in options.items() if k not in HARNESS_KEYS}
    resize = check_resize(options.get("resize"))
    splits = build_dataset(dataset.name, **builder_options)
    if resize is not None:
        if not splits.in_memory:
            raise ValueError(
                f"dataset.resize needs in-memory data, not {dataset.name} (its builder sets "
                "the image size)"
            )
        if len(splits.input_shape) != 3:
            raise ValueError(
                f"dataset.resize needs image inputs (C, H, W); {dataset.name} has inputs of "
                f"shape {splits.input_shape}"
            )
    sizes = {key: dataset.get(key) for key in ("train_subset", "test_subset")}
    if any(size is not None for size in sizes.values()):
        if not splits.in_memory:
            raise ValueError(
                f"dataset.train_subset/test_subset need in-memory data, not {dataset.name}"
            )
        splits = replace(
            splits,
            train=subset(splits.train, sizes["train_subset"], "train_subset"),  # type: ignore[arg-type]
            test=subset(splits.test, sizes["test_subset"], "test_subset"),  # type: ignore[arg-type]
        )
    transform = None
    if splits.num_classes is not None:
        transform = chain(
            autoaugment_cifar10() if dataset.get("autoaugment") else None,
            cutmix(splits.num_classes) if dataset.get("cutmix") else None,
        )
    train, test = splits.loaders(
        trainer.batch_size,
        test_batch_size=trainer.eval_batch_size,
        augment=dataset.get("augment", True),
        batch_transform=transform,
        resize=resize,
        seed=seed,
        rank=workers.rank,
        world_size=workers.world_size,
        device=workers.device if splits.in_memory else None,
        num_workers=trainer.num_workers,
    )
    shape = splits.input_shape if resize is None else (splits.input_shape[0], resize, resize)
    return Data(train, test, splits.task, splits.num_classes, tuple(shape))

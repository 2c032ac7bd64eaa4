"""From the ``dataset`` and ``trainer`` config groups to the loaders a training run iterates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data.loader import autoaugment_cifar10, chain, cutmix
from data.registry import build_dataset
from harness.distributed import Workers

HARNESS_KEYS = ("name", "augment", "cutmix", "autoaugment")
"""Keys of the ``dataset`` group that the harness reads; the rest go to the dataset builder."""


@dataclass
class Data:
    """Loaders and what the loop needs to know about the task."""

    train: Any
    test: Any
    task: str  # "classify" or "autoencode"
    num_classes: int | None


def build_data(dataset: DictConfig, trainer: DictConfig, workers: Workers, seed: int) -> Data:
    """Load the dataset and build this worker's train/test loaders (global batch sizes)."""
    options: dict[str, Any] = OmegaConf.to_container(dataset, resolve=True)  # type: ignore[assignment]
    builder_options = {k: v for k, v in options.items() if k not in HARNESS_KEYS}
    splits = build_dataset(dataset.name, **builder_options)
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
        seed=seed,
        rank=workers.rank,
        world_size=workers.world_size,
        device=workers.device if splits.in_memory else None,
        num_workers=trainer.num_workers,
    )
    task = "autoencode" if splits.autoencoder else "classify"
    return Data(train, test, task, splits.num_classes)

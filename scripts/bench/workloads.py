"""Workloads: what the contenders are stepped on.

- :class:`Workload`: a model of ``models/`` on a pool of random batches (CIFAR shape, ImageNet
  shape at the model's own resolution, or 784-vectors for the autoencoder);
- :func:`experiment_runs`: an experiment preset's own runs (``train.build_run``: its model, its
  data's first batches, its loss), one per setting, e.g. the byte-level GPT of ``experiment=lm``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from harness.distributed import Workers, resolve_device
from harness.optimizers import compose_config
from models.autoencoder import reconstruction_loss
from models.registry import build_model
from scripts.bench.contenders import Contender

IMAGENET_SIZES = {"resnet50": 224, "inception_v4": 299, "vit_b16": 224, "efficientnet_b0": 224}
"""ImageNet models and their input resolution (Inception-v4 takes 299×299)."""


@dataclass(frozen=True)
class Workload:
    """A model name with the input it is benchmarked on."""

    model: str
    batch: int
    input_shape: tuple[int, ...]
    num_classes: int | None  # None: autoencoder (targets are the inputs)

    def build(self, seed: int) -> nn.Module:
        """The model with the initial weights of ``seed``."""
        torch.manual_seed(seed)
        if self.num_classes is None:
            return build_model(self.model)
        return build_model(self.model, num_classes=self.num_classes)

    def batch_tensors(self, seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """A random batch: inputs ~ N(0, 1) (autoencoder: U[0, 1)), random labels."""
        gen = torch.Generator().manual_seed(seed + 1)
        if self.num_classes is None:
            x = torch.rand(self.batch, *self.input_shape, generator=gen)
            return x.to(device), x.to(device)
        x = torch.randn(self.batch, *self.input_shape, generator=gen)
        y = torch.randint(0, self.num_classes, (self.batch,), generator=gen)
        return x.to(device), y.to(device)

    def batch_pool(self, seed: int, device: torch.device, n: int) -> list[tuple[Tensor, Tensor]]:
        """``n`` distinct random batches (seeds ``seed``, ``seed + 1``, ...)."""
        return [self.batch_tensors(seed + i, device) for i in range(n)]

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy, or the autoencoder's per-image BCE (as ``train.py``)."""
        if self.num_classes is None:
            return reconstruction_loss(output, target)
        return F.cross_entropy(output, target)


def workload(model: str, batch: int, imagenet_batch: int, image_size: int = 32) -> Workload:
    """CIFAR models at 3×``image_size``² and 10 classes; ImageNet models at their own
    resolution and 1000 classes; the autoencoder on 784-vectors."""
    if model == "autoencoder":
        return Workload(model, batch, (784,), None)
    if model in IMAGENET_SIZES:
        size = IMAGENET_SIZES[model]
        return Workload(model, imagenet_batch, (3, size, size), 1000)
    return Workload(model, batch, (3, image_size, image_size), 10)


@dataclass
class ExperimentWorkload:
    """Settings of one experiment preset, each built by ``train.build_run``."""

    model: str  # the preset's model name (the record's key)
    contenders: dict[str, Contender]  # by setting
    batches: list[tuple[Tensor, Tensor]]
    loss: Callable[[Tensor, Tensor], Tensor]  # the first run's ``Run.loss``
    device: torch.device


def experiment_runs(experiment: str, settings: Sequence[str], batches: int) -> ExperimentWorkload:
    """The runs ``train.py experiment=<experiment> <setting>`` would train, one per setting.

    Args:
        experiment: A preset of ``conf/experiment`` (e.g. ``lm``), optionally followed by
            comma-separated overrides that every setting shares (e.g. ``lm,scale=smoke``).
        settings: Comma-separated ``train.py`` overrides per setting (e.g.
            ``optimizer=eva,optimizer.weight_decay=0.0005``); each names its contender.
        batches: How many of the first run's training batches every setting takes.
    """
    import train  # the training entry point, imported only for this workload

    contenders: dict[str, Contender] = {}
    runs = []
    name, *shared = experiment.split(",")
    for setting in settings:
        overrides = [f"experiment={name}", *shared, *setting.split(","), "logger.wandb=false"]
        cfg = compose_config(overrides)
        run = train.build_run(cfg, Workers(0, 1, 0, resolve_device(cfg.trainer.device)))
        runs.append(run)
        optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
        hparams = {"overrides": overrides, "optimizer": optimizer}
        contenders[setting] = Contender(
            setting, run.model, run.optimizer, run.preconditioner, None, hparams
        )
    first = runs[0]
    device = first.workers.device
    pool = [(x.to(device), y.to(device)) for x, y in itertools.islice(first.data.train, batches)]
    return ExperimentWorkload(first.cfg.model.name, contenders, pool, first.loss, device)

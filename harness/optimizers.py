"""From the ``optimizer`` config group to a ``torch.optim`` optimizer and its preconditioner.

The one builder: ``train.py`` and the benchmark (``scripts/bench``) both call
:func:`build_optimizer`, so a benchmark times exactly what a training run steps.
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from eva import Preconditioner
from harness.config import ConfigError


def build_optimizer(
    optimizer_cfg: DictConfig,
    model: nn.Module,
    skip_layers: list[str] | None = None,
    **preconditioner_kwargs: Any,
) -> tuple[torch.optim.Optimizer, Preconditioner | None]:
    """The optimizer of ``optimizer_cfg.base`` and, if the group has one, its preconditioner.

    Args:
        optimizer_cfg: A composed ``optimizer`` group (``conf/optimizer/<name>.yaml``).
        model: The model whose parameters are optimized (already on its device).
        skip_layers: ``model.skip_layers``: patterns of layers the preconditioner leaves
            first-order, unless the optimizer group sets its own (default: none).
        **preconditioner_kwargs: Passed to the preconditioner as well, e.g. a ``reducer``.

    Returns:
        ``(optimizer, preconditioner)``; the preconditioner is None for a first-order group.

    Raises:
        ConfigError: a hyper-parameter the library rejects, with the library's one line.
    """
    try:
        optimizer = instantiate(optimizer_cfg.base, params=model.parameters())
        pre_cfg = optimizer_cfg.get("preconditioner")
        if pre_cfg is None:
            return optimizer, None
        extra = dict(preconditioner_kwargs)
        if skip_layers is not None and "skip_layers" not in pre_cfg:
            extra["skip_layers"] = list(skip_layers)
        return optimizer, instantiate(pre_cfg, model=model, optimizer=optimizer, **extra)
    except InstantiationException as err:  # a bad hyper-parameter: report the library's line
        raise ConfigError(f"optimizer ({optimizer_cfg.name}): {err.__cause__ or err}") from err

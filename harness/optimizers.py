"""A run's optimizer and preconditioner, built from its ``optimizer`` config (``conf/optimizer``).

``train.py``, the demo and the benchmark (``scripts/bench``) build them here, so every entry
point runs exactly what the YAML file says: ``optimizer.base`` is the first-order ``torch.optim``
optimizer that takes the step, ``optimizer.preconditioner`` (null for a plain optimizer) the
Eva-family preconditioner that rewrites the gradients before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from eva import Preconditioner
from harness.config import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
"""The repository's Hydra configs (``harness`` is installed editable, beside ``conf/``)."""


def compose_config(overrides: Sequence[str] = (), config_dir: Path = CONF_DIR) -> DictConfig:
    """``conf/config.yaml`` with ``overrides``, as ``python train.py <overrides>`` composes it."""
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def compose_optimizer(
    name: str, overrides: Sequence[str] = (), config_dir: Path = CONF_DIR
) -> DictConfig:
    """The ``optimizer`` node that ``python train.py optimizer=<name> <overrides>`` would use.

    Args:
        name: A file of ``conf/optimizer`` without ``.yaml``, e.g. ``"eva"``.
        overrides: Hydra overrides as on train.py's command line, e.g. ``["optimizer.lr=0.005"]``.
        config_dir: The config folder. Default: the repository's ``conf/``.

    Returns:
        The composed ``optimizer`` config (interpolations resolve inside it).
    """
    return compose_config([f"optimizer={name}", *overrides], config_dir).optimizer


def build_optimizer(
    cfg: DictConfig,
    model: nn.Module,
    skip_layers: Sequence[str] | None = None,
    **preconditioner_kwargs: Any,
) -> tuple[torch.optim.Optimizer, Preconditioner | None]:
    """Instantiate ``cfg.base`` over the model's parameters and ``cfg.preconditioner`` on top.

    Args:
        cfg: An ``optimizer`` config (``conf/optimizer/<name>.yaml``, composed).
        model: The model to train (unwrapped: the preconditioner hooks its layers).
        skip_layers: The model's ``skip_layers`` (layers left first-order), passed to the
            preconditioner unless the optimizer config sets its own. Default: None.
        **preconditioner_kwargs: Passed to the preconditioner as well, e.g. a ``reducer``.

    Returns:
        The optimizer and the preconditioner (None when ``cfg.preconditioner`` is null).

    Raises:
        ConfigError: A hyper-parameter the optimizer or the preconditioner rejects, in one line
            naming the optimizer config.
    """
    try:
        optimizer = instantiate(cfg.base, params=model.parameters())
        pre_cfg = cfg.get("preconditioner")
        if pre_cfg is None:
            return optimizer, None
        extra: dict[str, Any] = dict(preconditioner_kwargs)
        if skip_layers is not None and "skip_layers" not in pre_cfg:
            extra["skip_layers"] = list(skip_layers)
        return optimizer, instantiate(pre_cfg, model=model, optimizer=optimizer, **extra)
    except InstantiationException as err:  # a bad hyper-parameter: report the library's line
        raise ConfigError(f"optimizer ({cfg.name}): {err.__cause__ or err}") from err

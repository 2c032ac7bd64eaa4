"""Contenders: what the benchmark steps, built exactly as ``train.py`` builds it.

A label names a config of ``conf/optimizer`` (``sgd``, ``eva``, ``kfac``, ``eva_f``...), composed
with Hydra's compose API and turned into an optimizer and preconditioner by
:func:`harness.optimizers.build_optimizer`, the function ``train.py`` uses. ``name@N`` sets the
preconditioner's ``update_interval`` to N (``kfac@10``); M-FAC's ``num_grads`` is the
benchmark's ``--mfac-grads``. Every other setting is conf/optimizer's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

import eva
from harness.optimizers import CONF_DIR, build_optimizer, compose_config, compose_optimizer
from scripts.bench.communication import CountingReducer


def optimizer_names() -> list[str]:
    """The choices of the ``optimizer`` config group (``conf/optimizer/*.yaml``)."""
    return sorted(path.stem for path in (CONF_DIR / "optimizer").glob("*.yaml"))


@functools.cache
def optimizer_config(name: str) -> DictConfig:
    """The composed ``optimizer`` group of ``name``, defaults only (cached; do not modify)."""
    return compose_optimizer(name)


def is_first_order(name: str) -> bool:
    """Whether ``optimizer=name`` has no preconditioner."""
    return optimizer_config(name).get("preconditioner") is None


def parse_label(label: str) -> tuple[str, int | None]:
    """``"kfac@10"`` → ``("kfac", 10)``; ``"eva"`` → ``("eva", None)``.

    Raises:
        ValueError: a name that is not in ``conf/optimizer``, an interval that is not an integer
            ≥ 1, or ``@`` on a first-order optimizer.
    """
    base, at, every = label.partition("@")
    known = optimizer_names()
    if base not in known:
        raise ValueError(f"unknown optimizer {base!r}; choose from {', '.join(known)}")
    if not at:
        return base, None
    if is_first_order(base):
        raise ValueError(f"{label!r}: first-order optimizers have no update interval")
    if not every.isdigit() or int(every) < 1:
        raise ValueError(f"{label!r}: the update interval after '@' must be an integer >= 1")
    return base, int(every)


def label_overrides(label: str, mfac_grads: int | None = None) -> list[str]:
    """The ``train.py`` overrides that give ``label``'s optimizer.

    Args:
        label: e.g. ``"sgd"``, ``"kfac@10"``.
        mfac_grads: ``optimizer.num_grads`` of optimizers that have it (M-FAC); None keeps
            conf/optimizer's.
    """
    base, interval = parse_label(label)
    defaults = optimizer_config(base)
    overrides = [f"optimizer={base}"]
    if interval is not None:
        if "update_interval" in defaults:
            overrides.append(f"optimizer.update_interval={interval}")
        else:  # the library default applies in conf/optimizer: set it on the preconditioner
            overrides.append(f"++optimizer.preconditioner.update_interval={interval}")
    if mfac_grads is not None and "num_grads" in defaults:
        overrides.append(f"optimizer.num_grads={mfac_grads}")
    return overrides


@dataclass
class Contender:
    """One algorithm's model copy, optimizer and preconditioner, and its measurements."""

    label: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    preconditioner: eva.Preconditioner | None
    reducer: CountingReducer | None
    hparams: dict[str, Any]
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    last_loss: Tensor | None = None

    def step(self, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """One training step: zero_grad, forward, backward, preconditioner, optimizer.

        The parts are ``torch.profiler.record_function`` ranges (``forward``, ``backward``,
        ``optimizer.step``; the preconditioner opens its own ``eva.*`` ranges), which cost
        nothing when no profiler is running.

        Returns:
            The (detached) loss.
        """
        self.optimizer.zero_grad()
        with torch.profiler.record_function("forward"):
            loss = loss_fn(self.model(x), y)
        with torch.profiler.record_function("backward"):
            loss.backward()
        if self.preconditioner is not None:
            self.preconditioner.step()
        with torch.profiler.record_function("optimizer.step"):
            self.optimizer.step()
        return loss.detach()


def build_contender(label: str, model: nn.Module, mfac_grads: int | None = None) -> Contender:
    """Wrap ``model`` (already on its device) with the optimizer and preconditioner of ``label``.

    A preconditioner gets a :class:`CountingReducer`, which records its all-reduce bytes.
    ``hparams`` holds the overrides and the resolved ``optimizer`` group.
    """
    overrides = label_overrides(label, mfac_grads)
    cfg = compose_config(overrides).optimizer
    reducer = CountingReducer()
    optimizer, preconditioner = build_optimizer(cfg, model, reducer=reducer)
    hparams = {"overrides": overrides, "optimizer": OmegaConf.to_container(cfg, resolve=True)}
    return Contender(
        label, model, optimizer, preconditioner, reducer if preconditioner else None, hparams
    )

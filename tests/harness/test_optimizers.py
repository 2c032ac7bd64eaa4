"""``harness.optimizers``: the optimizer and preconditioner built from ``conf/optimizer``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eva import Eva
from harness.config import ConfigError
from harness.optimizers import build_optimizer, compose_optimizer


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _unchanged_after_step(skip_layers: list[str] | None) -> list[bool]:
    """Whether each parameter's gradient is unchanged by one Eva step."""
    model = _model()
    _, preconditioner = build_optimizer(compose_optimizer("eva"), model, skip_layers)
    assert isinstance(preconditioner, Eva)
    model(torch.randn(8, 6, generator=torch.Generator().manual_seed(1))).square().mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    preconditioner.step()
    return [torch.equal(g, p.grad) for g, p in zip(plain, model.parameters())]


def test_compose_applies_overrides_through_the_interpolations() -> None:
    cfg = compose_optimizer("eva", ["optimizer.damping=0.3", "optimizer.lr=0.02"])
    assert cfg.name == "eva"
    assert (cfg.damping, cfg.preconditioner.damping) == (0.3, 0.3)
    assert (cfg.lr, cfg.base.lr) == (0.02, 0.02)


def test_plain_optimizer_has_no_preconditioner() -> None:
    cfg = compose_optimizer("sgd", ["optimizer.lr=0.05"])
    optimizer, preconditioner = build_optimizer(cfg, _model())
    assert preconditioner is None
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.9, 5e-4)


def test_skip_layers_leave_those_layers_first_order() -> None:
    assert _unchanged_after_step(None) == [False, False, False, False]  # both Linear layers
    assert _unchanged_after_step(["2"]) == [False, False, True, True]  # the last one left alone


def test_bad_hyperparameter_is_one_line_naming_the_optimizer() -> None:
    with pytest.raises(ConfigError) as info:
        build_optimizer(compose_optimizer("eva", ["optimizer.damping=-1"]), _model())
    message = str(info.value)
    assert message.startswith("optimizer (eva): ") and "damping" in message
    assert "\n" not in message

"""``torch.compile`` of the model keeps the statistics hooks working: the compiled run's
preconditioned gradients equal the eager run's.

The ``aot_eager`` backend traces through Dynamo and AOTAutograd exactly as the default backend
does, without generating C++ (which would take most of a minute on this CPU).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import eva
from tests.helpers import assert_runs_close, preconditioned_grads


def _model(batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    norm = [nn.BatchNorm2d(4)] if batchnorm else []
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), *norm, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )


@pytest.mark.parametrize(
    "name, batchnorm", [("eva", False), ("eva_f", False), ("kfac", False), ("eva", True)]
)
def test_compiled_model_gives_eager_gradients(name: str, batchnorm: bool) -> None:
    """With BatchNorm, eager Eva takes the conv's b̄ as zero and skips its ā (eva.batchnorm);
    traced code reads both (b̄ is then rounding noise): the same gradients."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 3, 6, 6, generator=gen), torch.randint(0, 5, (8,), generator=gen))
        for _ in range(3)
    ]
    eager = preconditioned_grads(_model(batchnorm), name, batches)
    compiled = preconditioned_grads(
        _model(batchnorm), name, batches, lambda m: torch.compile(m, backend="aot_eager")
    )
    assert_runs_close(compiled, eager, rtol=1e-5, atol=1e-7)


def _hooked_instance_after_a_plain_one() -> eva.Eva:
    """Compile and run one instance of ``_model`` without hooks, then attach Eva to another,
    compile it and run forward and backward; the preconditioner, before its step."""
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 6, 6, generator=gen), torch.randint(0, 5, (8,), generator=gen)
    torch.compile(_model(), backend="aot_eager")(x)  # compiled before any hook exists
    model = _model()
    pre = eva.Eva(model, torch.optim.SGD(model.parameters(), lr=0.1))
    F.cross_entropy(torch.compile(model, backend="aot_eager")(x), y).backward()
    return pre


def test_hooked_model_recompiles_after_a_plain_instance_with_hook_guards() -> None:
    """Dynamo does not guard on module hooks by default, so code compiled for another instance
    of the same class before the hooks existed could run without them (README: build the
    preconditioner first, or turn the hook guards on). With the guards on, the hooked instance
    gets its own code and its statistics are collected."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
        pre = _hooked_instance_after_a_plain_one()
        pre.step()
    torch._dynamo.reset()
    for layer in pre.layers:
        assert set(pre.state[layer.name]) == {"a_mean", "g_mean"}, layer.name


def test_code_compiled_without_the_hooks_stops_the_first_step() -> None:
    """With Dynamo's default guards the hooked instance runs the plain instance's code and no
    statistics arrive: the first step says so (and how to fix it) instead of leaving every
    gradient as it is."""
    torch._dynamo.reset()
    pre = _hooked_instance_after_a_plain_one()
    with pytest.raises(RuntimeError, match="skip_nnmodule_hook_guards = False"):
        pre.step()
    torch._dynamo.reset()

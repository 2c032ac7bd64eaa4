"""M-FAC against dense float64 math: F = λI + (1/m) Σ_{last m} g gᵀ, solved explicitly."""

from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor, nn

from eva.mfac import MFAC

DAMPING = 1e-3


def mlp(bias: bool) -> nn.Module:
    """Linear → tanh → Linear (float64)."""
    return nn.Sequential(nn.Linear(4, 5, bias=bias), nn.Tanh(), nn.Linear(5, 3)).double()


def cnn(bias: bool) -> nn.Module:
    """Conv2d → tanh → Linear (float64), for 2×4×4 inputs."""
    return nn.Sequential(
        nn.Conv2d(2, 3, kernel_size=3, padding=1, bias=bias), nn.Tanh(), nn.Flatten(),
        nn.Linear(3 * 4 * 4, 3, bias=bias),
    ).double()  # fmt: skip


def batch(model: nn.Module, step: int) -> tuple[Tensor, Tensor]:
    """A deterministic batch of 6 samples for ``model`` at ``step``."""
    gen = torch.Generator().manual_seed(1000 + step)
    shape = (6, 2, 4, 4) if isinstance(model[0], nn.Conv2d) else (6, 4)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (6,), generator=gen)


def backward(model: nn.Module, step: int) -> None:
    x, y = batch(model, step)
    nn.functional.cross_entropy(model(x), y).backward()


def grad_matrix(module: nn.Module) -> Tensor:
    """``G`` with the bias column, from the module's current ``.grad`` (a copy)."""
    g = module.weight.grad.flatten(1)
    if module.bias is not None:
        g = torch.cat([g, module.bias.grad.unsqueeze(1)], dim=1)
    return g.clone()


def assert_near(actual: Tensor, expected: Tensor, rtol: float = 1e-9) -> None:
    """Norm-wise relative error below ``rtol`` (elementwise tolerances misfire on tiny entries)."""
    error = ((actual - expected).norm() / expected.norm()).item()
    assert error <= rtol, f"relative error {error:.3g} > {rtol:g}"


def dense_mfac(window: list[Tensor], g: Tensor, m: int, damping: float) -> Tensor:
    """``(λI + (1/m) Σ_{last m of window} h hᵀ)⁻¹ g``, shaped like ``g``."""
    fisher = damping * torch.eye(g.numel(), dtype=torch.float64)
    for h in window[-m:]:
        fisher += torch.outer(h.flatten(), h.flatten()) / m
    return torch.linalg.solve(fisher, g.flatten()).reshape(g.shape)


@pytest.mark.parametrize("make", [mlp, cnn])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("m", [3, 5])
@pytest.mark.parametrize("damping", [DAMPING, 1e-5])
def test_matches_dense_fisher_inverse(make, bias: bool, m: int, damping: float) -> None:
    torch.manual_seed(0)
    model = make(bias)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pre = MFAC(model, opt, num_grads=m, damping=damping, scaling=None)
    modules = [layer.module for layer in pre.layers]
    assert len(modules) == 2
    history: dict[int, list[Tensor]] = {i: [] for i in range(len(modules))}
    for step in range(2 * m + 3):  # the window fills and slides
        opt.zero_grad()
        backward(model, step)
        for i, module in enumerate(modules):
            history[i].append(grad_matrix(module))
        pre.step()
        for i, module in enumerate(modules):
            expected = dense_mfac(history[i], history[i][-1], m, damping)
            assert_near(grad_matrix(module), expected)
        opt.step()


def test_update_interval_adds_every_kth_gradient() -> None:
    """update_interval=2: only even steps' gradients enter the window; all are preconditioned."""
    torch.manual_seed(0)
    m = 3
    model = mlp(True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pre = MFAC(model, opt, num_grads=m, damping=DAMPING, update_interval=2)
    modules = [layer.module for layer in pre.layers]
    window: dict[int, list[Tensor]] = {i: [] for i in range(len(modules))}
    for step in range(11):
        opt.zero_grad()
        backward(model, step)
        raw = [grad_matrix(module) for module in modules]
        pre.step()
        for i, module in enumerate(modules):
            if step % 2 == 0:
                window[i].append(raw[i])
            expected = dense_mfac(window[i], raw[i], m, DAMPING)
            assert_near(grad_matrix(module), expected)
        opt.step()
    assert pre.counts == {layer.name: 6 for layer in pre.layers}


def test_single_gradient_window_and_gram_without_drift() -> None:
    """m = 1: F = λI + g gᵀ, so p = g / (λ + ‖g‖²); the Gram matrix stays buffer @ bufferᵀ."""
    torch.manual_seed(0)
    for m in (1, 3):
        model = cnn(True)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        pre = MFAC(model, opt, num_grads=m, damping=DAMPING)
        for step in range(40):
            opt.zero_grad()
            backward(model, step)
            raw = [grad_matrix(layer.module) for layer in pre.layers]
            pre.step()
            if m == 1:
                for layer, g in zip(pre.layers, raw):
                    expected = g / (DAMPING + g.square().sum())
                    assert_near(grad_matrix(layer.module), expected)
            opt.step()
        assert pre.counts == {layer.name: 40 for layer in pre.layers}
        for state in pre.state.values():
            buf = state["grads"]
            assert buf.shape[0] == m
            torch.testing.assert_close(state["gram"], buf @ buf.T, rtol=1e-13, atol=0.0)


def make_run(m: int, update_interval: int) -> tuple[nn.Module, torch.optim.Optimizer, MFAC]:
    torch.manual_seed(0)
    model = cnn(True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    pre = MFAC(model, opt, num_grads=m, damping=DAMPING, update_interval=update_interval)
    return model, opt, pre


def train(model: nn.Module, opt: torch.optim.Optimizer, pre: MFAC, steps: range) -> None:
    for step in steps:
        opt.zero_grad()
        backward(model, step)
        pre.step()
        opt.step()


@pytest.mark.parametrize("update_interval", [1, 2])
def test_state_dict_round_trip_continues_identically(update_interval: int) -> None:
    m = 4
    model, opt, pre = make_run(m, update_interval)
    train(model, opt, pre, range(6))

    model1, opt1, pre1 = make_run(m, update_interval)
    train(model1, opt1, pre1, range(3))
    buffer = io.BytesIO()
    torch.save({"model": model1.state_dict(), "opt": opt1.state_dict(), "pre": pre1.state_dict()},
               buffer)  # fmt: skip
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    model2, opt2, pre2 = make_run(m, update_interval)
    with torch.no_grad():
        for p in model2.parameters():
            p.add_(1.0)  # the fresh model must be overwritten by the load
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    pre2.load_state_dict(saved["pre"])
    assert pre2.counts == pre1.counts and pre2.steps == 3
    train(model2, opt2, pre2, range(3, 6))

    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    for name, state in pre.state.items():
        for key, value in state.items():
            assert torch.equal(value, pre2.state[name][key]), (name, key)


def test_load_state_dict_rejects_other_window() -> None:
    model, opt, pre = make_run(4, 1)
    train(model, opt, pre, range(2))
    other = MFAC(model, opt, num_grads=3)
    with pytest.raises(ValueError, match="num_grads"):
        other.load_state_dict(pre.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_grads": 0}, "num_grads"),
        ({"num_grads": 2.0}, "num_grads"),
        ({"num_grads": True}, "num_grads"),
        ({"damping": 0}, "damping"),
        ({"damping": -1e-5}, "damping"),
    ],
)
def test_bad_hyper_parameters(kwargs: dict, name: str) -> None:
    model = mlp(True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=name):
        MFAC(model, opt, **kwargs)


def test_defaults() -> None:
    model = mlp(True)
    pre = MFAC(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert pre.num_grads == 1024 and pre.damping == 1e-5 and pre.scaling is None

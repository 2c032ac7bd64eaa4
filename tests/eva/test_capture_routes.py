"""The statistics routes of models without BatchNorm (:mod:`eva.capture`): ā read in the forward
hook, b̄ taken from the bias gradient each linear layer's autograd node computes. Both must give
exactly the statistics of Eq. 10 — the means of the input rows and of the output-gradient rows —
as float64 loops compute them, and fall back to reading the output gradient wherever the node
is not the layer's plain ``addmm`` with its own bias."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import eva.capture
import eva.statistics
from eva import Eva
from eva.capture import bias_gradient_node

DTYPE = torch.float64


class Net(nn.Module):
    """Two linear layers, the second optionally without a bias."""

    def __init__(self, bias_fc2: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3, bias=bias_fc2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def _pending_means(pre: Eva) -> dict[str, dict[str, Tensor]]:
    return {
        name: {k: total / count for k, (total, count) in p.items()}
        for name, p in pre.capture.pending.items()
    }


def _recorded(model: nn.Module) -> dict[str, list[tuple[Tensor, Tensor]]]:
    """Per layer, each call's (input, output gradient), recorded by plain hooks."""
    seen: dict[str, list] = {}

    def forward_hook(name, module, inputs, output):
        entry = [inputs[0].detach(), None]
        seen.setdefault(name, []).append(entry)
        output.register_hook(lambda g: entry.__setitem__(1, g.detach()))

    for name in ("fc1", "fc2"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: forward_hook(name, m, i, o)
        )
    return seen


def _reference(calls: list[tuple[Tensor, Tensor]], bias: bool) -> dict[str, Tensor]:
    """Eq. 10 per call (mean row, bias's 1 appended), averaged over the calls of the step."""
    a = [torch.stack([r for r in x.reshape(-1, x.shape[-1])]).mean(0) for x, _ in calls]
    b = [torch.stack([r for r in g.reshape(-1, g.shape[-1])]).mean(0) for _, g in calls]
    a_mean = torch.stack(a).mean(0)
    if bias:
        a_mean = torch.cat([a_mean, a_mean.new_ones(1)])
    return {"a_mean": a_mean, "g_mean": torch.stack(b).mean(0)}


@pytest.mark.parametrize("shape", [(6, 4), (2, 3, 4)])
def test_statistics_equal_eq10_with_two_calls_and_accumulation(shape, monkeypatch):
    reduced = []  # the layers whose output gradient is read (fc2 has no bias)
    original = eva.statistics.grad_mean
    monkeypatch.setattr(
        eva.statistics, "grad_mean", lambda m, gy: reduced.append(m) or original(m, gy)
    )
    torch.manual_seed(0)
    model = Net(bias_fc2=False).to(DTYPE)
    pre = Eva(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert pre.capture.zero_grad_means is None  # no BatchNorm: nothing held
    seen = _recorded(model)
    gen = torch.Generator().manual_seed(1)
    for micro in range(2):  # gradient accumulation: two micro-batches of different sizes
        rows = shape[:-1] if micro == 0 else (shape[0] + 1, *shape[1:-1])
        x = torch.randn(*rows, 4, generator=gen, dtype=DTYPE)
        model(x).square().mean().backward()
    assert reduced == [model.fc2, model.fc2]
    got = _pending_means(pre)
    for name, bias in (("fc1", True), ("fc2", False)):
        want = _reference(seen[name], bias)
        for key in ("a_mean", "g_mean"):
            torch.testing.assert_close(got[name][key], want[key], rtol=1e-13, atol=1e-15)


def test_the_node_is_found_only_for_a_plain_linear_with_its_own_bias():
    fc = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    assert bias_gradient_node(fc, fc(x)) is not None
    assert bias_gradient_node(fc, fc(x.view(1, 5, 4))) is not None  # a view of addmm
    assert bias_gradient_node(fc, fc(torch.randn(2, 4, 5).transpose(1, 2))) is None  # matmul
    assert bias_gradient_node(nn.Linear(4, 3, bias=False), fc(x)) is None
    frozen = nn.Linear(4, 3)
    frozen.bias.requires_grad_(False)
    assert bias_gradient_node(frozen, frozen(x)) is None
    other = nn.Linear(4, 3)
    assert bias_gradient_node(other, fc(x)) is None  # addmm of another layer's bias
    assert bias_gradient_node(fc, fc(x) + 1.0) is None  # a subclass's extra term
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bias_gradient_node(fc, fc(x)) is None  # the bias enters as a cast copy


def test_fallbacks_read_the_output_gradient(monkeypatch):
    """A layer whose node is not found (here: none is) gets b̄ from its output gradient, with
    the same values."""
    states = []
    for found in (True, False):
        if not found:
            monkeypatch.setattr(eva.capture, "bias_gradient_node", lambda module, output: None)
        torch.manual_seed(0)
        model = Net().to(DTYPE)
        pre = Eva(model, torch.optim.SGD(model.parameters(), lr=0.1))
        gen = torch.Generator().manual_seed(2)
        for _ in range(2):
            model.zero_grad()
            x = torch.randn(7, 4, generator=gen, dtype=DTYPE)
            F.mse_loss(model(x), torch.zeros(7, 3, dtype=DTYPE)).backward()
            pre.step()
        states.append(pre.state)
    for name, state in states[0].items():
        for key, value in state.items():
            torch.testing.assert_close(states[1][name][key], value, rtol=1e-14, atol=1e-16)


def test_a_backward_without_the_bias_gradient_still_gives_g_mean():
    """``torch.autograd.grad`` with respect to the weights only: the node computes no bias
    gradient, b̄ comes from its output gradient."""
    torch.manual_seed(0)
    model = Net().to(DTYPE)
    pre = Eva(model, torch.optim.SGD(model.parameters(), lr=0.1))
    seen = _recorded(model)
    loss = model(torch.randn(6, 4, dtype=DTYPE)).square().mean()
    torch.autograd.grad(loss, [model.fc1.weight, model.fc2.weight])
    got = _pending_means(pre)
    for name in ("fc1", "fc2"):
        want = _reference(seen[name], True)
        torch.testing.assert_close(got[name]["g_mean"], want["g_mean"], rtol=1e-13, atol=1e-15)

"""Eva reads no ā while b̄'s running average is exactly zero (eva.batchnorm.ZeroGradMeans), and
reads it in the backward pass from the input autograd keeps anyway (eva.saved_input)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import eva.capture
from eva import Eva, statistics
from eva.saved_input import HeldInput, saved_by_autograd
from tests.helpers import (
    DTYPE,
    ConvBN,
    TinyCNN,
    forward_backward,
    fresh,
    image_batches,
    make_model,
    sgd,
)

RUNNING_AVG = 0.95  # Eva's default ξ


class CountedPlan:
    """A :class:`~eva.statistics.MeanPlan` that records its layer at every read (except inside
    ``input_mean``, which counts itself)."""

    def __init__(self, plan: statistics.MeanPlan, layer: nn.Module, calls: list, inside: list):
        self.plan, self.layer, self.calls, self.inside = plan, layer, calls, inside

    def fits(self, x: Tensor) -> bool:
        return self.plan.fits(x)

    def __call__(self, x: Tensor, bias: bool) -> Tensor:
        if not self.inside:
            self.calls.append(self.layer)
        return self.plan(x, bias)


def count_input_means(monkeypatch) -> list[nn.Module]:
    """The layers whose input is read for ā (``statistics.input_mean`` or a ``MeanPlan``),
    call by call."""
    calls: list[nn.Module] = []
    inside: list[bool] = []  # non-empty while input_mean runs
    original, original_plan = statistics.input_mean, statistics.mean_plan

    def counted(layer: nn.Module, x: Tensor, bias: bool) -> Tensor:
        calls.append(layer)
        inside.append(True)
        try:
            return original(layer, x, bias)
        finally:
            inside.pop()

    def counted_plan(layer: nn.Module, x: Tensor) -> CountedPlan | None:
        plan = original_plan(layer, x)
        return None if plan is None else CountedPlan(plan, layer, calls, inside)

    monkeypatch.setattr(statistics, "input_mean", counted)
    monkeypatch.setattr(statistics, "mean_plan", counted_plan)
    return calls


def image(step: int) -> Tensor:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 3, 6, 6, generator=gen, dtype=DTYPE)


def conv1_a_mean(x: Tensor) -> Tensor:
    """Dense ā of ConvBN.conv1 (3×3, padding 1, no bias): the mean im2col row."""
    return F.unfold(x, 3, padding=1).mean(dim=(0, 2))


def run(model: nn.Module, steps: range, pre: Eva, eval_bn1_from: int | None = None) -> None:
    for step in steps:
        if eval_bn1_from is not None and step >= eval_bn1_from:
            model.bn1.eval()
        pre.optimizer.zero_grad()
        model(image(step)).square().mean().backward()
        pre.step()
        pre.optimizer.step()


def new_eva(model: nn.Module, **options) -> Eva:
    return Eva(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), **options)


def test_no_input_is_read_where_the_gradient_mean_is_zero(monkeypatch):
    reference_model = fresh(ConvBN).to(DTYPE)
    reference = new_eva(reference_model)
    reference.capture.batchnorm.remove()  # reads every b̄ and ā
    run(reference_model, range(3), reference)

    calls = count_input_means(monkeypatch)
    model = fresh(ConvBN).to(DTYPE)
    pre = new_eva(model)
    run(model, range(3), pre)
    assert calls == [model.fc2] * 3
    for name in ("conv1", "conv2", "fc1"):  # b̄ ≡ 0: ā not kept, a zero placeholder
        assert not pre.state[name]["a_mean"].any() and not pre.state[name]["g_mean"].any()
        assert pre.state[name]["a_mean"].shape == reference.state[name]["a_mean"].shape
    for key in ("a_mean", "g_mean"):
        assert torch.equal(pre.state["fc2"][key], reference.state["fc2"][key])
    for p, q in zip(model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-14)  # b̄ ≈ 1e-17 there


def test_the_first_nonzero_gradient_mean_starts_the_input_average_afresh():
    model = fresh(ConvBN).to(DTYPE)
    reference_model = fresh(ConvBN).to(DTYPE)
    pre, reference = new_eva(model), new_eva(reference_model)
    reference.capture.batchnorm.remove()
    run(model, range(2), pre)
    run(reference_model, range(2), reference)
    assert "conv1" in pre.capture.zero_grad_means.zero

    # frozen bn1 (running statistics): conv1's b̄ is no longer zero
    run(model, range(2, 3), pre, eval_bn1_from=2)
    run(reference_model, range(2, 3), reference, eval_bn1_from=2)
    assert "conv1" not in pre.capture.zero_grad_means.zero
    a_3 = conv1_a_mean(image(2))
    torch.testing.assert_close(pre.state["conv1"]["a_mean"], a_3, rtol=1e-12, atol=1e-15)
    b_3 = reference.state["conv1"]["g_mean"]  # ξ b̄_3 + (1 − ξ)·(rounding noise of b̄_1, b̄_2)
    assert b_3.abs().max() > 1e-6
    torch.testing.assert_close(pre.state["conv1"]["g_mean"], b_3, rtol=1e-9, atol=1e-15)

    run(model, range(3, 4), pre, eval_bn1_from=2)  # from here on an ordinary running average
    a_4 = conv1_a_mean(image(3))
    torch.testing.assert_close(
        pre.state["conv1"]["a_mean"], torch.lerp(a_3, a_4, RUNNING_AVG), rtol=1e-12, atol=1e-15
    )


def test_loading_a_state_keeps_track_of_the_zero_gradient_means(monkeypatch):
    model = fresh(ConvBN).to(DTYPE)
    pre = new_eva(model)
    run(model, range(2), pre)
    twin = fresh(ConvBN).to(DTYPE)
    twin.load_state_dict(model.state_dict())
    loaded = new_eva(twin)
    loaded.state["conv1"]["g_mean"] = torch.ones(4, dtype=DTYPE)  # replaced by the load
    loaded.capture.zero_grad_means.read("conv2")  # so is any earlier bookkeeping
    loaded.load_state_dict(pre.state_dict())
    assert loaded.capture.zero_grad_means.zero == {"conv1", "conv2", "fc1"}
    assert not loaded.capture.zero_grad_means.restart

    nonzero = pre.state_dict()
    nonzero["layers"]["conv2"]["g_mean"] = torch.full((4,), 1e-3, dtype=DTYPE)
    loaded.load_state_dict(nonzero)
    assert loaded.capture.zero_grad_means.zero == {"conv1", "fc1"}
    calls = count_input_means(monkeypatch)
    run(twin, range(2, 3), loaded)
    assert calls == [twin.fc2, twin.conv2]  # conv2's b̄ average is not zero: its ā matters


def test_stat_batch_reads_every_input(monkeypatch):
    calls = count_input_means(monkeypatch)
    model = fresh(ConvBN).to(DTYPE)
    pre = new_eva(model, stat_batch=8)  # 8 = the batch: b̄ still zero, but ā is read
    assert pre.capture.zero_grad_means is None
    run(model, range(1), pre)
    assert len(calls) == 4


def test_reading_the_input_in_the_backward_pass_gives_the_same_statistics(monkeypatch):
    """Without BatchNorm every ā is read; held to the backward pass or read in the forward
    hook, the statistics are identical."""
    batches = image_batches(2)
    states = []
    for held in (True, False):
        if not held:
            monkeypatch.setattr(eva.capture, "held_input", lambda module, x: None)
        model = make_model(TinyCNN)
        pre = Eva(model, sgd(model))
        for batch in batches:
            forward_backward(model, batch)
            pre.step()
        states.append(pre.state)
    for name, state in states[1].items():
        for key, value in state.items():
            assert torch.equal(states[0][name][key], value)


def test_a_held_input_is_not_retained():
    model = fresh(ConvBN).to(DTYPE)
    pre = new_eva(model)
    refs: list[weakref.ref] = []

    def record(module, inputs, output):
        refs.append(weakref.ref(inputs[0]))

    for layer in pre.layers:
        layer.module.register_forward_hook(record)
    x = image(0).requires_grad_()  # every input a non-leaf tensor or one we drop
    model(x).square().mean().backward()
    del x
    gc.collect()
    assert len(refs) == 4 and all(r() is None for r in refs)


def test_an_input_modified_in_place_after_the_layer_fails_as_without_eva():
    class Modifies(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.fc1(x))
            y = self.fc2(h)
            h.mul_(2.0)  # fc2 saved h for its weight gradient
            return y

    model = make_model(Modifies)
    Eva(model, sgd(model))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        model(torch.randn(3, 4, dtype=DTYPE)).sum().backward()
    held = HeldInput(torch.ones(2))
    held.x.add_(1)  # type: ignore[union-attr]
    assert held.take() is None


class OwnForwardConv(nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (1, 1, 1, 1)))


def test_inputs_are_held_only_where_autograd_keeps_them():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    assert saved_by_autograd(conv, x)
    assert not saved_by_autograd(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), x)
    assert not saved_by_autograd(nn.Conv2d(3, 4, 3, padding="same"), x)
    assert not saved_by_autograd(OwnForwardConv(3, 4, 3), x)
    frozen = nn.Conv2d(3, 4, 3)
    frozen.weight.requires_grad_(False)
    assert not saved_by_autograd(frozen, x)

    fc = nn.Linear(5, 4)
    rows = torch.randn(6, 5)
    assert saved_by_autograd(fc, rows) and saved_by_autograd(fc, rows.view(2, 3, 5))
    assert saved_by_autograd(fc, torch.randn(5, 6).t())  # 2-D: saved as it is
    assert not saved_by_autograd(fc, torch.randn(2, 5, 3).transpose(1, 2))  # reshape copies

    with torch.autograd.graph.save_on_cpu():
        assert not saved_by_autograd(conv, x)
    seen = []
    checkpoint(lambda t: seen.append(saved_by_autograd(conv, t)) or conv(t), x, use_reentrant=False)
    assert seen == [False]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not saved_by_autograd(conv, x)  # conv2d saves a bfloat16 copy
        assert saved_by_autograd(conv, x.bfloat16())


def test_bf16_autocast_statistics_are_the_same_held_or_not(monkeypatch):
    """Under CPU bf16 autocast the first layer's float32 input is read in the forward hook (the
    convolution saves a bf16 copy); later layers' bf16 inputs are held. Either way the
    statistics are float32 and equal to those read in the forward hook."""
    x, y = image_batches(1)[0]
    states = []
    for held in (True, False):
        if not held:
            monkeypatch.setattr(eva.capture, "held_input", lambda module, x: None)
        torch.manual_seed(0)
        model = TinyCNN()
        pre = Eva(model, sgd(model))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x.float()), y)
        loss.backward()
        pre.step()
        states.append(pre.state)
    for name, state in states[1].items():
        for key, value in state.items():
            assert value.dtype == torch.float32
            assert torch.equal(states[0][name][key], value), (name, key)

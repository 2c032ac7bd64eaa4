"""Statistics capture (eva/capture.py): the hooks keep only statistics, only on refresh steps and
only in training forwards; ``stat_batch``, activation checkpointing, gradient accumulation and
in-place activations after a layer.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import eva
from eva import Eva
from tests.dense_reference import im2col_rows
from tests.helpers import (
    DTYPE,
    NAMES,
    STAT_NAMES,
    TinyMLP,
    accepted_kwargs,
    assert_params_equal,
    build,
    copy_model,
    forward_backward,
    image_batches,
    make_model,
    sgd,
    train_steps,
    vector_batches,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only cost time


def pending_snapshot(pre) -> dict[str, dict[str, tuple[Tensor, int]]]:
    return {
        name: {k: (v[0].clone(), v[1]) for k, v in pending.items()}
        for name, pending in pre.capture.pending.items()
    }


def assert_snapshots_equal(a, b) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for k in a[name]:
            assert a[name][k][1] == b[name][k][1]
            assert torch.equal(a[name][k][0], b[name][k][0]), (name, k)


# ---------------------------------------------------------------------------------------------
# Hooks keep only statistics
# ---------------------------------------------------------------------------------------------
def test_pending_holds_only_vectors():
    model = make_model()
    pre = Eva(model, sgd(model))
    forward_backward(model, image_batches(1)[0])
    assert set(pre.capture.pending) == {"conv1", "conv2", "fc1", "fc2"}
    for layer in pre.layers:
        pending = pre.capture.pending[layer.name]
        assert set(pending) == {"a_mean", "g_mean"}
        d_in = layer.weight[0].numel() + (layer.module.bias is not None)
        assert pending["a_mean"][0].shape == (d_in,), layer.name
        assert pending["g_mean"][0].shape == (layer.weight.shape[0],), layer.name
        assert pending["a_mean"][1] == pending["g_mean"][1] == 1


@pytest.mark.parametrize("name", ["eva", "eva_f", "foof"])
def test_prepared_input_mean_route_equals_the_general_route(name, monkeypatch):
    """ā through the per-shape MeanPlans (most calls) equals the general route of
    statistics.input_mean, over changing batch sizes and two micro-batches per step."""
    cls = eva.PRECONDITIONERS[name]

    def run(m: nn.Module):
        p = build(cls, m, sgd(m))
        for x, y in image_batches(3, batch=8)[:2] + image_batches(1, batch=5):
            for xb, yb in zip((x[:3], x[3:]), (y[:3], y[3:]), strict=True):
                (F.cross_entropy(m(xb), yb) / 2).backward()
            p.step()
            p.optimizer.step()
            p.optimizer.zero_grad()
        return p

    with monkeypatch.context() as patch:  # no plan for any shape: every ā by the general route
        patch.setattr(eva.statistics, "mean_plan", lambda module, x: None)
        general = run(make_model())
    pre = run(make_model())
    for layer in pre.layers:
        for key, value in general.state[layer.name].items():
            torch.testing.assert_close(pre.state[layer.name][key], value, rtol=1e-12, atol=1e-14)
    if "a_factor" in cls.statistics_needed:
        assert not pre.capture.mean_plans  # the patches are unfolded anyway
    else:
        plans = [p for shapes in pre.capture.mean_plans.values() for p in shapes.values()]
        assert plans and all(isinstance(p, eva.statistics.MeanPlan) for p in plans)


def test_frozen_bias_and_unbatched_conv():
    """A frozen bias adds no column; an unbatched (C, H, W) conv input counts as one sample."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1).to(DTYPE)
    fc = nn.Linear(3 * 4 * 4, 2).to(DTYPE)
    fc.bias.requires_grad_(False)
    model = nn.ModuleDict({"conv": conv, "fc": fc})
    pre = Eva(model, sgd(model))
    x = torch.randn(2, 4, 4, dtype=DTYPE)
    fc(conv(x).flatten()).square().sum().backward()
    a_conv = pre.capture.pending["conv"]["a_mean"][0]
    a_fc = pre.capture.pending["fc"]["a_mean"][0]
    assert a_fc.shape == (48,) and torch.equal(a_fc, conv(x).detach().flatten())
    rows = im2col_rows(conv, x.unsqueeze(0)).reshape(-1, 18).mean(0)
    torch.testing.assert_close(a_conv, torch.cat([rows, torch.ones(1, dtype=DTYPE)]))
    raw_bias = fc.bias.grad
    pre.step()
    assert fc.bias.grad is raw_bias is None


def test_no_activation_is_retained():
    model = make_model()
    pre = Eva(model, sgd(model))
    refs: list[weakref.ref] = []

    def record(module, inputs, output):
        refs.extend([weakref.ref(inputs[0]), weakref.ref(output)])

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    batch = image_batches(1)[0]
    forward_backward(model, batch)
    del batch
    gc.collect()
    assert refs and all(r() is None for r in refs), "an activation outlived forward/backward"
    for h in handles:
        h.remove()
    pre.step()


def test_no_statistics_off_refresh_steps():
    model = make_model()
    optimizer = sgd(model)
    pre = Eva(model, optimizer, update_interval=2)
    batches = image_batches(2)
    train_steps(model, optimizer, pre, batches[:1])
    forward_backward(model, batches[1])
    assert all(not pending for pending in pre.capture.pending.values())


@pytest.mark.parametrize("name", NAMES)
def test_eval_and_no_grad_forwards_collect_nothing(name):
    cls = eva.PRECONDITIONERS[name]
    batches = image_batches(3)
    other = image_batches(2, seed=9)
    model_a = make_model()
    model_b = copy_model(model_a)
    opt_a, opt_b = sgd(model_a), sgd(model_b)
    pre_a = build(cls, model_a, opt_a, update_interval=1)
    pre_b = build(cls, model_b, opt_b, update_interval=1)

    for batch in batches:
        opt_a.zero_grad()
        forward_backward(model_a, batch)
        before = pending_snapshot(pre_a)
        model_a.eval()
        model_a(other[0][0])  # grad enabled, eval mode
        model_a.train()
        with torch.no_grad():
            model_a(other[1][0])  # training mode, no grad
        assert_snapshots_equal(before, pending_snapshot(pre_a))
        pre_a.step()
        opt_a.step()
    train_steps(model_b, opt_b, pre_b, batches)
    assert_params_equal(model_a, model_b)


def _stat_batch_names():
    return [n for n in STAT_NAMES if "stat_batch" in accepted_kwargs(eva.PRECONDITIONERS[n])]


@pytest.mark.parametrize("name", _stat_batch_names())
def test_stat_batch_equals_first_k_samples(name):
    cls = eva.PRECONDITIONERS[name]
    k = 3
    x, y = image_batches(1)[0]
    model = make_model()
    twin = copy_model(model)
    pre = build(cls, model, sgd(model), update_interval=1, stat_batch=k)
    ref = build(cls, twin, sgd(twin), update_interval=1)
    # a sum loss makes every sample's output gradient independent of the batch it is in
    forward_backward(model, (x, y), reduction="sum")
    forward_backward(twin, (x[:k], y[:k]), reduction="sum")
    pre.step()
    ref.step()
    for layer in pre.layers:
        for key in cls.statistics_needed:
            torch.testing.assert_close(
                pre.state[layer.name][key], ref.state[layer.name][key], rtol=1e-10, atol=1e-13,
                msg=lambda m, layer=layer, key=key: f"{layer.name}/{key}: {m}",
            )  # fmt: skip


def test_stat_batch_mean_loss_uses_rows_as_delivered():
    """With a batch-mean loss, b̄ is the mean of the first k rows of dL/dy as autograd gives them."""
    k = 3
    batch = vector_batches(1)[0]
    model = make_model(TinyMLP)
    pre = Eva(model, sgd(model), stat_batch=k)
    outputs = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            outputs[name] = (inputs[0].detach(), output)

        return hook

    for layer in pre.layers:
        layer.module.register_forward_hook(keep(layer.name))
    forward_backward(model, batch)
    pre.step()
    for name, (inp, out) in outputs.items():
        a = torch.cat([inp[:k].mean(0), torch.ones(1, dtype=DTYPE)])
        torch.testing.assert_close(pre.state[name]["a_mean"], a, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(
            pre.state[name]["g_mean"], out.grad[:k].mean(0), rtol=1e-12, atol=1e-14
        )


def test_stat_batch_with_unbatched_linear_input():
    model = make_model(TinyMLP)
    twin = copy_model(model, TinyMLP)
    pre = Eva(model, sgd(model), stat_batch=2)
    ref = Eva(twin, sgd(twin))
    x = torch.randn(6, dtype=DTYPE)
    model(x).square().sum().backward()
    twin(x).square().sum().backward()
    pre.step()
    ref.step()
    for name in ref.state:
        for key in ("a_mean", "g_mean"):
            torch.testing.assert_close(pre.state[name][key], ref.state[name][key])


@pytest.mark.parametrize("reentrant", [True, False])
def test_activation_checkpointing_gives_the_same_statistics(reentrant):
    """Recomputed forwards (inside backward) must not change the statistics."""

    class Checkpointed(TinyMLP):
        def forward(self, x):
            def segment(t):
                return F.relu(self.fc2(F.relu(self.fc1(t))))

            return self.fc3(checkpoint(segment, x, use_reentrant=reentrant))

    x, y = vector_batches(1)[0]
    plain = make_model(TinyMLP)
    ckpt = make_model(Checkpointed)
    pre_plain, pre_ckpt = Eva(plain, sgd(plain)), Eva(ckpt, sgd(ckpt))
    forward_backward(plain, (x, y))
    forward_backward(ckpt, (x.requires_grad_(reentrant), y))
    pre_plain.step()
    pre_ckpt.step()
    for name, state in pre_plain.state.items():
        for key, value in state.items():
            torch.testing.assert_close(pre_ckpt.state[name][key], value, rtol=1e-12, atol=1e-15)
    for p, q in zip(plain.parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", STAT_NAMES)
def test_gradient_accumulation_averages_micro_batches(name):
    cls = eva.PRECONDITIONERS[name]
    x, y = image_batches(1)[0]
    micro = [(x[:4], y[:4]), (x[4:], y[4:])]

    def loss_backward(model, batch):
        (F.cross_entropy(model(batch[0]), batch[1]) / 2).backward()

    model = make_model()
    pre = build(cls, model, sgd(model), update_interval=1)
    for batch in micro:
        loss_backward(model, batch)
    pre.step()

    singles = []
    for batch in micro:
        twin = copy_model(model)
        ref = build(cls, twin, sgd(twin), update_interval=1)
        loss_backward(twin, batch)
        ref.step()
        singles.append(ref.state)
    for layer in pre.layers:
        for key in cls.statistics_needed:
            expected = (singles[0][layer.name][key] + singles[1][layer.name][key]) / 2
            torch.testing.assert_close(pre.state[layer.name][key], expected, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# In-place activations after a layer
# ---------------------------------------------------------------------------------------------
class ReluNet(nn.Sequential):
    def __init__(self, inplace: bool):
        super().__init__(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace),
            nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(inplace=inplace),
            nn.Flatten(),
            nn.Linear(16, 5), nn.ReLU(inplace=inplace),
            nn.Linear(5, 3),
        )  # fmt: skip


def test_inplace_relu_after_layer_gives_true_output_gradient():
    model = make_model(lambda: ReluNet(inplace=True))
    reference = make_model(lambda: ReluNet(inplace=False), seed=7)
    reference.load_state_dict(model.state_dict())
    batch = image_batches(1)[0]

    pre = Eva(model, sgd(model))
    loss = forward_backward(model, batch)
    pre.step()

    outputs = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            outputs[name] = (inputs[0].detach().clone(), output)

        return hook

    for name in ("0", "2", "5", "7"):
        reference.get_submodule(name).register_forward_hook(keep(name))
    ref_loss = forward_backward(reference, batch)
    assert torch.equal(loss, ref_loss)

    for name, (inp, out) in outputs.items():
        dims = (0, 2, 3) if out.dim() == 4 else (0,)
        torch.testing.assert_close(
            pre.state[name]["g_mean"], out.grad.mean(dims), rtol=1e-12, atol=1e-15
        )
        if out.dim() == 2:
            a = torch.cat([inp.mean(0), torch.ones(1, dtype=DTYPE)])
            torch.testing.assert_close(pre.state[name]["a_mean"], a, rtol=1e-12, atol=1e-15)

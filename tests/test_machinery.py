"""The machinery every preconditioner shares (eva/preconditioner.py, layers.py, statistics.py):
reduction to torch.optim, layer discovery, statistics hooks, validation and state dicts.

Every test that concerns all algorithms iterates ``eva.PRECONDITIONERS``, so classes added to the
registry are covered automatically; keyword arguments a class does not accept are left out
(``inspect.signature``).
"""

from __future__ import annotations

import copy
import gc
import io
import math
import re
import warnings
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import eva
from eva import Eva
from tests.helpers import (
    DTYPE,
    TinyMLP,
    accepted_kwargs,
    assert_params_equal,
    build,
    copy_model,
    forward_backward,
    grads,
    image_batches,
    make_model,
    registry_names,
    sgd,
    train_steps,
    vector_batches,
)

NAMES = registry_names()
STAT_NAMES = [n for n in NAMES if eva.PRECONDITIONERS[n].statistics_needed]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These tensors are tiny: intra-op threads only cost time (a lot on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
# 1. Reduction to torch.optim
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_disabled_equals_plain_sgd(name):
    cls = eva.PRECONDITIONERS[name]
    batches = image_batches(4)
    model = make_model()
    reference = copy_model(model)

    optimizer = sgd(model)
    pre = build(cls, model, optimizer, enabled=False, update_interval=1)
    train_steps(model, optimizer, pre, batches)
    assert all(not pending for pending in pre.capture.pending.values())

    train_steps(reference, sgd(reference), None, batches)
    assert_params_equal(model, reference)


@pytest.mark.parametrize("name", NAMES)
def test_disabling_mid_run_stops_all_effects(name):
    cls = eva.PRECONDITIONERS[name]
    batches = image_batches(6)
    model = make_model()
    optimizer = sgd(model)
    pre = build(cls, model, optimizer, update_interval=1)

    changed = False
    for batch in batches[:3]:
        optimizer.zero_grad()
        forward_backward(model, batch)
        raw = grads(model)
        pre.step()
        changed |= any(not torch.equal(raw[n], p.grad) for n, p in model.named_parameters())
        optimizer.step()
    assert changed, "the preconditioner had no effect while enabled"

    reference = copy_model(model)
    ref_optimizer = sgd(reference)
    ref_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # no shared buffers

    pre.enabled = False
    for batch in batches[3:]:
        optimizer.zero_grad()
        forward_backward(model, batch)
        assert all(not pending for pending in pre.capture.pending.values())
        raw = grads(model)
        pre.step()
        for n, p in model.named_parameters():
            assert torch.equal(raw[n], p.grad), n
        optimizer.step()
    train_steps(reference, ref_optimizer, None, batches[3:])
    assert_params_equal(model, reference)


@pytest.mark.parametrize("name", STAT_NAMES)
def test_disabling_between_backward_and_step_discards_statistics(name):
    """Toggling ``enabled`` after backward equals toggling it before the forward."""
    cls = eva.PRECONDITIONERS[name]
    batches = image_batches(4)

    def run(toggle_after_backward: bool) -> nn.Module:
        model = make_model()
        optimizer = sgd(model)
        pre = build(cls, model, optimizer, update_interval=1)
        for i, batch in enumerate(batches):
            optimizer.zero_grad()
            pre.enabled = not (i == 2 and not toggle_after_backward)
            forward_backward(model, batch)
            pre.enabled = i != 2
            pre.step()
            optimizer.step()
        return model

    assert_params_equal(run(True), run(False))


# ---------------------------------------------------------------------------------------------
# 2. Layer discovery: unsupported layers, skip_layers, subclasses, conv variants
# ---------------------------------------------------------------------------------------------
class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.gconv = nn.Conv2d(4, 4, 3, padding=1, groups=2)

    def forward(self, x):
        return self.gconv(torch.relu(self.bn(self.conv(x))))


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Body()
        self.ln = nn.LayerNorm(4)
        self.emb = nn.Embedding(10, 3)
        self.head = nn.Linear(7, 3)

    def forward(self, img, idx):
        h = self.ln(self.body(img).mean(dim=(2, 3)))
        return self.head(torch.cat([h, self.emb(idx)], dim=1))


FIRST_ORDER = {
    "body.bn.weight", "body.bn.bias", "body.gconv.weight", "body.gconv.bias",
    "ln.weight", "ln.bias", "emb.weight",
}  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_unsupported_layers_untouched(name):
    cls = eva.PRECONDITIONERS[name]
    model = make_model(Mixed)
    optimizer = sgd(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pre = build(cls, model, optimizer, update_interval=1)
    naming = [str(w.message) for w in caught if "body.gconv" in str(w.message)]
    assert len(naming) == 1, [str(w.message) for w in caught]
    assert [layer.name for layer in pre.layers] == ["body.conv", "head"]

    g = torch.Generator().manual_seed(3)
    img = torch.randn(6, 3, 5, 5, generator=g, dtype=DTYPE)
    idx = torch.randint(10, (6,), generator=g)
    y = torch.randint(3, (6,), generator=g)
    F.cross_entropy(model(img, idx), y).backward()
    raw = grads(model)
    pre.step()

    after = grads(model)
    for n in FIRST_ORDER:
        assert torch.equal(raw[n], after[n]), n
    # Eva-s leaves a softmax head as it is, to rounding: the mean of its gradient over the
    # classes (v_2 of Eq. 22) is zero, so its rank-one correction vanishes
    preconditioned = (
        ("body.conv.weight",) if name == "eva_s" else ("body.conv.weight", "head.weight")
    )
    for n in preconditioned:
        assert not torch.equal(raw[n], after[n]), f"{n} was not preconditioned"


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)

    def forward(self, x):
        return torch.tanh(self.fc(x))


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(6, 5)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        x = torch.tanh(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "patterns, skipped",
    [
        (["head"], {"head"}),
        (["blocks.*"], {"blocks.0.fc", "blocks.1.fc"}),
        (["blocks.1.*", "st*"], {"blocks.1.fc", "stem"}),
    ],
)
def test_skip_layers_untouched(name, patterns, skipped):
    cls = eva.PRECONDITIONERS[name]
    model = make_model(Stack)
    pre = build(cls, model, sgd(model), update_interval=1, skip_layers=patterns)
    all_layers = {"stem", "blocks.0.fc", "blocks.1.fc", "head"}
    assert {layer.name for layer in pre.layers} == all_layers - skipped

    forward_backward(model, vector_batches(1)[0])
    raw = grads(model)
    pre.step()
    after = grads(model)
    for layer in all_layers:
        w = f"{layer}.weight"
        if layer in skipped:
            assert torch.equal(raw[w], after[w]) and torch.equal(
                raw[f"{layer}.bias"], after[f"{layer}.bias"]
            )
        else:
            assert not torch.equal(raw[w], after[w]), w


def test_skip_layers_as_a_single_string():
    model = make_model(Stack)
    try:
        pre = Eva(model, sgd(model), skip_layers="head")
    except ValueError as error:  # rejecting a bare string is fine too
        assert "skip_layers" in str(error)
        return
    assert "head" not in {layer.name for layer in pre.layers}


class MyLinear(nn.Linear):
    pass


class MyConv(nn.Conv2d):
    pass


class SubclassNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = MyConv(3, 2, 3)
        self.fc = MyLinear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_subclasses_are_found():
    model = make_model(SubclassNet)
    pre = Eva(model, sgd(model))
    assert [layer.name for layer in pre.layers] == ["conv", "fc"]
    forward_backward(model, image_batches(1)[0])
    raw = grads(model)
    pre.step()
    for n, p in model.named_parameters():
        assert not torch.equal(raw[n], p.grad), n
    # class names work as skip patterns too
    assert [layer.name for layer in Eva(model, sgd(model), skip_layers=["MyConv"]).layers] == ["fc"]


def explicit_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom), derived from the module's attributes."""
    if isinstance(conv.padding, str):
        assert conv.padding == "same"
        pads = []
        for k, d in zip(conv.kernel_size, conv.dilation):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return left, right, top, bottom
    ph, pw = conv.padding
    return pw, pw, ph, ph


def im2col_rows(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Explicit im2col by looping over output positions: shape (N, H_out, W_out, C·kh·kw)."""
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = F.pad(x, explicit_padding(conv), mode=mode)
    (kh, kw), (dh, dw), (sh, sw) = conv.kernel_size, conv.dilation, conv.stride
    h_out = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    w_out = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    rows = torch.empty(x.shape[0], h_out, w_out, x.shape[1] * kh * kw, dtype=x.dtype)
    for n in range(x.shape[0]):
        for i in range(h_out):
            for j in range(w_out):
                patch = xp[n, :, i * sh : i * sh + dh * (kh - 1) + 1 : dh,
                           j * sw : j * sw + dw * (kw - 1) + 1 : dw]  # fmt: skip
                rows[n, i, j] = patch.reshape(-1)
    return rows


CONV_CONFIGS = {
    "dilation": dict(kernel_size=3, dilation=2, padding=2),
    "same-even": dict(kernel_size=(2, 3), padding="same"),
    "same-dilated": dict(kernel_size=(3, 2), padding="same", dilation=(2, 3)),
    "reflect": dict(kernel_size=3, padding=1, padding_mode="reflect"),
    "replicate-nobias": dict(kernel_size=3, padding=(2, 1), padding_mode="replicate", bias=False),
    "circular-strided": dict(kernel_size=3, padding=(1, 2), padding_mode="circular", stride=2),
    "strided": dict(kernel_size=(3, 2), padding=(2, 1), stride=(2, 1), dilation=(1, 2)),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("config", list(CONV_CONFIGS))
def test_conv_statistics_match_explicit_im2col(config):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, **CONV_CONFIGS[config]).to(DTYPE)
    model = nn.Sequential(conv)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 2, 7, 8, generator=g, dtype=DTYPE)

    rows = im2col_rows(conv, x)
    out = model(x)
    # the explicit im2col reproduces the convolution, so it is the layer's patch layout
    explicit = rows @ conv.weight.reshape(3, -1).t()
    if conv.bias is not None:
        explicit = explicit + conv.bias
    torch.testing.assert_close(explicit.permute(0, 3, 1, 2), out, rtol=1e-12, atol=1e-12)

    flat = rows.reshape(-1, rows.shape[-1])
    if conv.bias is not None:
        flat = torch.cat([flat, torch.ones(flat.shape[0], 1, dtype=DTYPE)], dim=1)
    a_mean = flat.mean(dim=0)
    target = torch.randn(out.shape, generator=g, dtype=DTYPE)  # d loss / d out = target

    pre = Eva(model, sgd(model))
    kfac = {cf: eva.KFAC(model, sgd(model), update_interval=1, conv_factors=cf)
            for cf in ("reduce", "expand")}  # fmt: skip
    (model(x) * target).sum().backward()
    pre.step()
    for k in kfac.values():
        k.step()

    torch.testing.assert_close(pre.state["0"]["a_mean"], a_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        pre.state["0"]["g_mean"], target.mean(dim=(0, 2, 3)), rtol=1e-12, atol=1e-14
    )

    # factors (no batch-mean shortcut): per-position rows vs per-sample spatial means
    per_sample = rows.flatten(1, 2)  # (N, L, d)
    if conv.bias is not None:
        per_sample = torch.cat(
            [per_sample, torch.ones(*per_sample.shape[:2], 1, dtype=DTYPE)], dim=2
        )
    expand = per_sample.flatten(0, 1)
    reduce = per_sample.mean(dim=1)
    torch.testing.assert_close(
        kfac["expand"].state["0"]["a_factor"],
        expand.t() @ expand / expand.shape[0],
        rtol=1e-12,
        atol=1e-14,
    )
    torch.testing.assert_close(
        kfac["reduce"].state["0"]["a_factor"],
        reduce.t() @ reduce / reduce.shape[0],
        rtol=1e-12,
        atol=1e-14,
    )


# ---------------------------------------------------------------------------------------------
# 3. Hooks keep only statistics
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
# 4. In-place activations after a layer
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


# ---------------------------------------------------------------------------------------------
# 5. Validation
# ---------------------------------------------------------------------------------------------
BAD = [
    ("damping", 0), ("damping", -1), ("damping", math.nan), ("damping", math.inf),
    ("running_avg", 0), ("running_avg", 1.5), ("running_avg", -0.5), ("running_avg", math.nan),
    ("kl_clip", -0.1), ("kl_clip", math.nan),
    ("scaling", "bogus"),
    ("update_interval", 0), ("update_interval", 1.5), ("update_interval", -2),
    ("stat_batch", 0), ("stat_batch", -1),
    ("conv_factors", "x"),
]  # fmt: skip
BAD_CASES = [
    pytest.param(name, param, value, id=f"{name}-{param}={value}")
    for name in NAMES
    for param, value in BAD
    if param in accepted_kwargs(eva.PRECONDITIONERS[name])
]


@pytest.mark.parametrize("name, param, value", BAD_CASES)
def test_bad_hyperparameter_raises_naming_it(name, param, value):
    model = make_model()
    with pytest.raises(ValueError, match=re.escape(param)):
        eva.PRECONDITIONERS[name](model, sgd(model), **{param: value})


@pytest.mark.parametrize("name", NAMES)
def test_bad_model_or_optimizer_raises(name):
    cls = eva.PRECONDITIONERS[name]
    bn_only = nn.Sequential(nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="supported layer"):
        cls(bn_only, sgd(bn_only))
    mlp = make_model(TinyMLP)
    with pytest.raises(ValueError, match="supported layer"):
        build(cls, mlp, sgd(mlp), skip_layers=["fc*"])
    with pytest.raises(ValueError, match="optimizer"):
        cls(mlp, list(mlp.parameters()))
    cls(mlp, sgd(mlp))  # defaults are valid


# ---------------------------------------------------------------------------------------------
# 6. state_dict round trip
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_identically(name):
    cls = eva.PRECONDITIONERS[name]
    batches = image_batches(6, seed=4)
    kwargs = {"update_interval": 2}

    model = make_model()
    resumed = copy_model(model)
    optimizer = sgd(model)
    train_steps(model, optimizer, build(cls, model, optimizer, **kwargs), batches)

    opt_1 = sgd(resumed)
    pre_1 = build(cls, resumed, opt_1, **kwargs)
    train_steps(resumed, opt_1, pre_1, batches[:3])
    buffer = io.BytesIO()
    torch.save(
        {"model": resumed.state_dict(), "optimizer": opt_1.state_dict(), "pre": pre_1.state_dict()},
        buffer,
    )
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    fresh = make_model(seed=99)
    fresh.load_state_dict(checkpoint["model"])
    opt_2 = sgd(fresh)
    opt_2.load_state_dict(checkpoint["optimizer"])
    pre_2 = build(cls, fresh, opt_2, **kwargs)
    pre_2.load_state_dict(checkpoint["pre"])
    train_steps(fresh, opt_2, pre_2, batches[3:])

    assert_params_equal(fresh, model)


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_with_other_layers_raises(name):
    cls = eva.PRECONDITIONERS[name]
    model = make_model()
    optimizer = sgd(model)
    pre = build(cls, model, optimizer, update_interval=1)
    train_steps(model, optimizer, pre, image_batches(1))
    other = build(cls, model, optimizer, update_interval=1, skip_layers=["fc2"])
    with pytest.raises(ValueError, match="layers"):
        other.load_state_dict(pre.state_dict())
    smaller = make_model(TinyMLP)
    with pytest.raises(ValueError, match="layers"):
        build(cls, smaller, sgd(smaller)).load_state_dict(pre.state_dict())


@pytest.mark.parametrize("name", registry_names())
def test_unknown_option_is_a_type_error(name):
    model = make_model()
    with pytest.raises(TypeError, match="dampnig"):
        eva.PRECONDITIONERS[name](model, sgd(model), dampnig=0.1)


def test_class_defaults_override_shared_defaults():
    model = make_model()
    kfac, foof = eva.KFAC(model, sgd(model)), eva.FOOF(model, sgd(model))
    assert (kfac.update_interval, kfac.running_avg, kfac.scaling) == (10, 0.95, "kl_clip")
    assert (foof.update_interval, foof.running_avg) == (50, 1.0)
    assert eva.EvaF(model, sgd(model)).scaling == "kl_norm"
    assert eva.EvaS(model, sgd(model)).running_avg is None
    assert eva.KFAC(model, sgd(model), update_interval=3).update_interval == 3


@pytest.mark.parametrize("name", ["eva", "kfac"])
def test_loss_scale_is_divided_out_of_statistics(name):
    """fp16-style loss scaling: backward of S·loss, unscaled parameter gradients and
    ``step(grad_scale=S)`` give the same update as the unscaled loss."""
    results = []
    for scale in (None, 1024.0):
        model = make_model()
        optimizer = sgd(model)
        pre = eva.PRECONDITIONERS[name](model, optimizer, update_interval=1)
        for x, y in image_batches(3):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            (loss * (scale or 1.0)).backward()
            if scale is not None:
                for p in model.parameters():
                    p.grad.div_(scale)
            pre.step(grad_scale=scale)
            optimizer.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_statistics_are_declared_where_defined(name):
    """``uses_gradient_statistics`` is explicit (the step reads the flag, not the class body):
    every registered class that defines ``gradient_statistics`` declares it, and no other."""
    cls = eva.PRECONDITIONERS[name]
    defines = cls.gradient_statistics is not eva.Preconditioner.gradient_statistics
    assert cls.uses_gradient_statistics == defines

"""Layer discovery (eva/layers.py): unsupported layers left first-order, ``skip_layers`` patterns,
subclasses of the supported layers.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import eva
from eva import Eva
from tests.helpers import (
    DTYPE,
    NAMES,
    build,
    forward_backward,
    grads,
    image_batches,
    make_model,
    sgd,
    vector_batches,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only cost time


# ---------------------------------------------------------------------------------------------
# Layer discovery: unsupported layers, skip_layers, subclasses, conv variants
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

"""The in-place rank-one step (eva.rank_one) gives exactly what the generic path gives:
``precondition`` for every layer, the scaling over the list, then the write-back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import eva
from eva import rank_one


def _model(channels_last: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 6),
        nn.Tanh(),
        nn.Linear(6, 6, bias=False),
        nn.Linear(6, 3),
    ).double()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _run(cls: type, options: dict, generic: bool, channels_last: bool = False) -> list:
    if generic:
        cls = type("Generic" + cls.__name__, (cls,), {"_rank_one_applies": lambda self: False})
    model = _model(channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    pre = cls(model, optimizer, **options)
    gen = torch.Generator().manual_seed(1)
    out = []
    for step in range(3):
        x = torch.randn(7, 3, 5, 5, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (7,), generator=gen)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        optimizer.zero_grad()
        head = model[-1]  # step 1: the last layer gets no gradient
        logits = model(x) if step != 1 else model[:-1](x)[:, :3]
        F.cross_entropy(logits, y).backward()
        assert (head.weight.grad is None) == (step == 1)
        pre.step()
        out.append([p.grad.clone() if p.grad is not None else None for p in model.parameters()])
        optimizer.step()
    return out


CASES = [
    (eva.Eva, {}),
    (eva.Eva, {"scaling": None}),
    (eva.Eva, {"scaling": "kl_norm"}),
    (eva.Eva, {"kl_clip": None}),
    (eva.Eva, {"kl_clip": 1e-9}),  # clipping active
    (eva.Eva, {"scaling": "graft"}),
    (eva.EvaF, {}),
    (eva.EvaF, {"divide_by_damping": True, "scaling": "kl_clip"}),
    (eva.EvaS, {}),  # grafting, running sums, weights only (G as (d_1, d_2·…·d_k))
    (eva.EvaS, {"running_avg": 0.9, "scaling": "kl_clip", "kl_clip": 1e-9}),
]


@pytest.mark.parametrize(("cls", "options"), CASES, ids=lambda c: getattr(c, "__name__", str(c)))
def test_in_place_step_equals_the_generic_path(cls, options, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(rank_one, "rank_one_step", _spy(rank_one.rank_one_step, calls))
    got = _run(cls, options, generic=False)
    assert len(calls) == 3  # every step went through the in-place path
    want = _run(cls, options, generic=True)
    assert len(calls) == 3
    for got_step, want_step in zip(got, want, strict=True):
        for g, w in zip(got_step, want_step, strict=True):
            if w is None:
                assert g is None
            else:
                torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


def _spy(fn, calls: list):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped


def test_channels_last_gradients_take_the_generic_path(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(rank_one, "rank_one_step", _spy(rank_one.rank_one_step, calls))
    got = _run(eva.Eva, {}, generic=False, channels_last=True)
    assert not calls
    want = _run(eva.Eva, {}, generic=True)
    for got_step, want_step in zip(got, want, strict=True):
        for g, w in zip(got_step, want_step, strict=True):
            if w is not None:
                torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_changed_math_or_other_algorithms_take_the_generic_path() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for name in ("eva", "eva_f", "eva_s"):
        assert eva.PRECONDITIONERS[name](model, optimizer)._rank_one_applies()

    class Halved(eva.Eva):
        def precondition(self, layer, state, grad):
            return super().precondition(layer, state, grad) / 2

    assert not Halved(model, optimizer)._rank_one_applies()
    for name in ("kfac", "foof", "shampoo", "mfac"):
        assert not eva.PRECONDITIONERS[name](model, optimizer)._rank_one_applies()

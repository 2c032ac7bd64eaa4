"""The in-place rank-one step (eva.rank_one.RankOnePreconditioner.step_in_place) gives exactly
what the generic path gives: ``precondition`` for every layer, the scaling over the list, then the
write-back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import eva
from eva import rank_one_ops
from eva.rank_one import RankOnePreconditioner
from tests.helpers import assert_runs_close


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
        cls = type("Generic" + cls.__name__, (cls,), {"in_place_rank_one": False})
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
        grads = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
        out.append([*grads, pre.scale_factor])  # the scaling's factor too
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


@pytest.mark.parametrize("cpu_forms", [True, False], ids=["cpu-forms", "foreach-forms"])
@pytest.mark.parametrize(("cls", "options"), CASES, ids=lambda c: getattr(c, "__name__", str(c)))
def test_in_place_step_equals_the_generic_path(cls, options, cpu_forms, monkeypatch) -> None:
    """Both forms of the write-back and norms (CPU: fused ``addmm_`` and dot products;
    accelerators: ``torch._foreach`` kernels, run here on the CPU)."""
    monkeypatch.setattr(rank_one_ops, "CPU_FORMS", cpu_forms)
    calls = _spy_in_place(monkeypatch)
    got = _run(cls, options, generic=False)
    assert len(calls) == 3  # every step went through the in-place path
    want = _run(cls, options, generic=True)
    assert len(calls) == 3
    assert_runs_close(got, want, rtol=1e-12, atol=1e-14)


def _spy_in_place(monkeypatch) -> list:
    """Count the in-place steps (one per ``step`` that takes the in-place path)."""
    calls: list = []
    original = RankOnePreconditioner.step_in_place

    def wrapped(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RankOnePreconditioner, "step_in_place", wrapped)
    return calls


def test_channels_last_gradients_take_the_generic_path(monkeypatch) -> None:
    calls = _spy_in_place(monkeypatch)
    got = _run(eva.Eva, {}, generic=False, channels_last=True)
    assert not calls
    assert_runs_close(got, _run(eva.Eva, {}, generic=True), rtol=1e-10, atol=1e-12)


def test_the_rank_one_family_steps_in_place_others_and_opted_out_subclasses_do_not(
    monkeypatch,
) -> None:
    """Eva, Eva-f and Eva-s (and only they) are rank-one preconditioners; a subclass that changes
    the math of ``precondition`` opts out with ``in_place_rank_one = False`` and then gets the
    changed math through the generic path."""
    family = {n for n, c in eva.PRECONDITIONERS.items() if issubclass(c, RankOnePreconditioner)}
    assert family == {"eva", "eva_f", "eva_s"}

    class Halved(eva.Eva):
        in_place_rank_one = False

        def precondition(self, layer, state, grad):
            return super().precondition(layer, state, grad) / 2

    calls = _spy_in_place(monkeypatch)
    halved = _run(Halved, {"scaling": None}, generic=False)
    assert not calls
    full = _run(eva.Eva, {"scaling": None}, generic=False)
    assert len(calls) == 3
    assert halved[0][-1] is full[0][-1] is None  # scaling=None: no factor
    for got, want in zip(halved[0][:-1], full[0][:-1], strict=True):  # step 1: same state, P/2
        torch.testing.assert_close(got, want / 2, rtol=1e-12, atol=1e-15)


def test_eva_and_eva_f_step_all_layers_at_once_eva_s_layer_by_layer() -> None:
    """Eva and Eva-f take the batched form (zero-padded stacks kept between steps); Eva-s, whose
    layers have different numbers of mode vectors, and a subclass that redefines the rank-one
    form without declaring it batched go layer by layer, with the same result."""
    assert eva.Eva.rank_one_batched and eva.EvaF.rank_one_batched
    assert not eva.EvaS.rank_one_batched

    class Unbatched(eva.Eva):
        rank_one_batched = False

        def rank_one_correction(self, state, gv):
            a, b = state["a_mean"], state["g_mean"]
            gamma = self.damping
            return b * ((b @ gv) / (-gamma * (gamma + (a @ a) * (b @ b))))

    for cls in (eva.Eva, Unbatched):
        got = _run(cls, {}, generic=False)
        assert_runs_close(got, _run(eva.Eva, {}, generic=True), rtol=1e-12, atol=1e-14)


def test_batched_step_keeps_zero_padding_and_its_stacks() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pre = eva.Eva(model, optimizer)
    x, y = torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        pre.step()
    stacks = dict(pre.stacks)
    # the state and G v; on the CPU also f u and v as written back
    assert {key[0] for key in stacks} == {"a_mean", "g_mean", "G v", "f u", "v written"}
    for (tag, lengths, *_), rows in stacks.items():
        for row, n in zip(rows.matrix, lengths, strict=True):
            assert not row[n:].any(), tag  # padding never written
        if tag in ("a_mean", "g_mean"):
            for layer, row in zip(pre.layers, rows.rows, strict=True):
                torch.testing.assert_close(row, pre.state[layer.name][tag], rtol=0, atol=0)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    pre.step()
    assert all(pre.stacks[key] is stacks[key] for key in stacks)  # reused, not rebuilt


class _MixedPrecision(nn.Module):
    """A float64 layer feeding a float32 one: no common dtype to stack the layers in."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 5).double()
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)).float())


def test_layers_of_different_dtypes_step_layer_by_layer() -> None:
    runs = []
    for generic in (False, True):
        cls = eva.Eva
        if generic:
            cls = type("GenericEva", (cls,), {"in_place_rank_one": False})
        torch.manual_seed(0)
        model = _MixedPrecision()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        pre = cls(model, optimizer)
        gen = torch.Generator().manual_seed(2)
        steps = []
        for _ in range(2):
            x = torch.randn(5, 6, generator=gen, dtype=torch.float64)
            y = torch.randint(0, 3, (5,), generator=gen)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            pre.step()
            steps.append([p.grad.clone() for p in model.parameters()])
            optimizer.step()
        assert not pre.stacks  # never stacked
        runs.append(steps)
    assert_runs_close(runs[0], runs[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scaling", ["kl_clip", "kl_norm", None])
def test_non_finite_gradients_stay_non_finite_in_every_form(scaling, monkeypatch) -> None:
    """An inf in one gradient (fp32 overflow without a loss scaler): the CPU form must not drop
    it (``addmm_`` ignores ``G`` when its factor is 0), so every form leaves the same entries
    non-finite and the training loop can see the step diverge."""

    def grads(cpu_forms: bool | None) -> list[torch.Tensor]:
        monkeypatch.setattr(rank_one_ops, "CPU_FORMS", bool(cpu_forms))
        cls = eva.Eva
        if cpu_forms is None:
            cls = type("GenericEva", (eva.Eva,), {"in_place_rank_one": False})
        model = _model()
        pre = cls(model, torch.optim.SGD(model.parameters(), lr=0.3), scaling=scaling)
        x = torch.randn(7, 3, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        F.cross_entropy(model(x), torch.arange(7) % 3).backward()
        model[0].weight.grad[0, 0, 0, 0] = float("inf")
        pre.step()
        return [torch.isfinite(p.grad) for p in model.parameters()]

    want = grads(None)
    assert not all(w.all() for w in want)
    for cpu_forms in (True, False):
        for got, expected in zip(grads(cpu_forms), want, strict=True):
            assert torch.equal(got, expected), (cpu_forms, got, expected)

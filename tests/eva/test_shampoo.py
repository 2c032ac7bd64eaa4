"""Shampoo (Eq. 7–8) against dense float64 math built with ``torch.kron``."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eva.shampoo import Shampoo, merged_shape

DAMPING = 1e-3


# The layers here are tiny: one intra-op thread avoids thread-pool overhead on a busy CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- models and loop
def mlp(bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5, bias=bias), nn.Tanh(), nn.Linear(5, 3)).double()


class CNN(nn.Module):
    """conv(stride, padding, dilation, non-square kernel, bias) → conv(no bias) → linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2),
                               dilation=(1, 2))  # fmt: skip
        self.conv2 = nn.Conv2d(4, 5, kernel_size=3, padding=1, dilation=2, bias=False)
        self.fc = nn.Linear(5 * 2 * 3, 3)
        self.double()

    def forward(self, x: Tensor) -> Tensor:
        x = torch.tanh(self.conv1(x))
        x = torch.tanh(self.conv2(x))
        return self.fc(x.flatten(1))


def batch(model: nn.Module, step: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    shape = (4, 3, 7, 3) if isinstance(model, CNN) else (4, 6)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (4,), generator=gen)


Record = list[dict[str, tuple[Tensor, Tensor]]]


def train(model: nn.Module, steps: int, start: int = 0, **hparams) -> tuple[Record, Shampoo]:
    """SGD + Shampoo; per step and layer: (raw weight gradient, preconditioned weight gradient)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pre = Shampoo(model, opt, damping=DAMPING, **hparams)
    return run(model, opt, pre, steps, start), pre


def run(model: nn.Module, opt, pre: Shampoo, steps: int, start: int = 0) -> Record:
    record: Record = []
    for t in range(start, start + steps):
        opt.zero_grad()
        x, y = batch(model, t)
        F.cross_entropy(model(x), y).backward()
        raw = {layer.name: layer.weight.grad.clone() for layer in pre.layers}
        pre.step()
        record.append(
            {n: (g, pre.model.get_submodule(n).weight.grad.clone()) for n, g in raw.items()}
        )
        opt.step()
    return record


# ---------------------------------------------------------------------------- dense reference
def mat(g: Tensor, i: int) -> Tensor:
    """``mat_i(G)``: dimension ``i`` as rows, all others flattened as columns."""
    return g.movedim(i, 0).reshape(g.shape[i], -1)


def root(m: Tensor, order: int) -> Tensor:
    """``(M + γI)^(-1/order)`` in float64, checked against its definition."""
    lam, q = torch.linalg.eigh(m)
    r = q @ torch.diag((lam.clamp(min=0) + DAMPING) ** (-1.0 / order)) @ q.T
    eye = torch.eye(m.shape[0], dtype=m.dtype)
    torch.testing.assert_close(torch.linalg.matrix_power(r, order) @ (m + DAMPING * eye), eye)
    return r


def kron(mats: list[Tensor]) -> Tensor:
    out = mats[0]
    for m in mats[1:]:
        out = torch.kron(out, m)
    return out


def dense_shampoo(raw: list[Tensor], interval: int, xi: float | None = None) -> list[Tensor]:
    """Eq. 8 on one tensor over steps: ``(⊗_i R_i) vec(G)`` with row-major ``vec``."""
    k = raw[0].dim()
    ms: list[Tensor] = []
    out = []
    for t, g in enumerate(raw):
        cur = [mat(g, i) @ mat(g, i).T for i in range(k)]
        if not ms:
            ms = cur
        elif xi is None:
            ms = [m + c for m, c in zip(ms, cur)]
        else:
            ms = [xi * c + (1 - xi) * m for m, c in zip(ms, cur)]
        if t % interval == 0:
            c = kron([root(m, 2 * k) for m in ms])
        out.append((c @ g.flatten()).reshape(g.shape))
    return out


def check_dense(record: Record, name: str, view: Callable[[Tensor], Tensor], interval: int,
                xi: float | None = None) -> None:  # fmt: skip
    raw = [view(step[name][0]) for step in record]
    for t, expected in enumerate(dense_shampoo(raw, interval, xi)):
        torch.testing.assert_close(view(record[t][name][1]), expected, rtol=1e-9, atol=1e-12)


def test_kron_convention() -> None:
    """Row-major ``vec``: ``(A ⊗ B) vec(G) = vec(A G Bᵀ)``."""
    a, b, g = (torch.randn(s, dtype=torch.float64) for s in [(3, 3), (4, 4), (3, 4)])
    torch.testing.assert_close(torch.kron(a, b) @ g.flatten(), (a @ g @ b.T).flatten())


# ---------------------------------------------------------------------------- 1. dense math
@pytest.mark.parametrize("interval", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_mlp_matches_dense(interval: int, bias: bool) -> None:
    record, _ = train(mlp(bias), 5, update_interval=interval, scaling=None)
    for name in ["0", "2"]:
        check_dense(record, name, lambda g: g, interval)


@pytest.mark.parametrize("interval", [1, 3])
def test_cnn_merged_matches_dense(interval: int) -> None:
    """Merged: each conv weight is the matrix (C_out, C_in·kh·kw), k = 2."""
    record, _ = train(CNN(), 5, update_interval=interval, scaling=None)
    for name in ["conv1", "conv2", "fc"]:
        check_dense(record, name, lambda g: g.flatten(1), interval)


@pytest.mark.parametrize("interval", [1, 3])
def test_cnn_unmerged_matches_dense(interval: int) -> None:
    """``merge_dims=False``: conv weights stay 4-D, k = 4, roots ``(M_i + γI)^(-1/8)``."""
    record, _ = train(CNN(), 4, update_interval=interval, scaling=None, merge_dims=False)
    for name in ["conv1", "conv2", "fc"]:
        assert record[0][name][0].dim() == (4 if name.startswith("conv") else 2)
        check_dense(record, name, lambda g: g, interval)


def test_running_average_matches_dense() -> None:
    """``running_avg=ξ``: Eq. 14's average instead of the running sum."""
    record, _ = train(CNN(), 4, update_interval=2, scaling=None, running_avg=0.3)
    for name in ["conv1", "fc"]:
        check_dense(record, name, lambda g: g.flatten(1), 2, xi=0.3)


def test_merged_shape() -> None:
    assert merged_shape(torch.Size([64, 64, 3, 3]), 1024) == (64, 576)
    assert merged_shape(torch.Size([16, 3, 3, 3]), 1024) == (16, 27)
    assert merged_shape(torch.Size([256, 256, 3, 3]), 1024) == (256, 256, 9)
    assert merged_shape(torch.Size([8, 2048, 1, 1]), 1024) == (8, 2048)
    assert merged_shape(torch.Size([10, 1, 1, 1]), 1024) == (10, 1)
    assert merged_shape(torch.Size([10, 20]), 4) == (10, 20)
    assert merged_shape(torch.Size([8, 4, 2, 2]), 16) == (8, 16)  # product == max_dim merges
    assert merged_shape(torch.Size([8, 4, 2, 2]), 15) == (8, 4, 4)
    assert merged_shape(torch.Size([64, 64, 3, 3]), 1024, merge_dims=False) == (64, 64, 3, 3)


# ---------------------------------------------------------------------------- 2. blocking
def test_blocks_match_dense_per_block() -> None:
    """``max_dim=4``: fc (3, 30) → column blocks 7 × 4 + 2; conv2 (5, 4, 3, 3) unmerged → dim 0
    split 4 + 1; each block is dense Shampoo of its own (k = order of the tensor)."""
    record, pre = train(CNN(), 4, update_interval=2, scaling=None, max_dim=4, merge_dims=False)
    blocks = {
        "fc": [(slice(None), slice(j, j + 4)) for j in range(0, 30, 4)],
        "conv2": [slice(0, 4), slice(4, 5)],
    }
    for name, index in blocks.items():
        assert sum(k.startswith("R") and k.endswith("_0") for k in pre.state[name]) == len(index)
        for ix in index:
            check_dense(record, name, lambda g, ix=ix: g[ix], 2)
    assert pre.state["fc"]["M0_1"].shape == (4, 4)
    assert pre.state["fc"]["M7_1"].shape == (2, 2)


def test_blocks_with_merging() -> None:
    """``max_dim=20``: conv2 (5, 4, 3, 3) → (5, 4, 9); fc (3, 30) → column blocks 20 + 10."""
    record, _ = train(CNN(), 3, update_interval=1, scaling=None, max_dim=20)
    check_dense(record, "conv2", lambda g: g.reshape(5, 4, 9), 1)
    check_dense(record, "fc", lambda g: g[:, :20], 1)
    check_dense(record, "fc", lambda g: g[:, 20:], 1)


# ---------------------------------------------------------------------------- 3. grafting
def test_grafting_keeps_gradient_norm() -> None:
    """Each weight gradient keeps its norm and takes Eq. 8's direction; biases are untouched."""
    model, twin = CNN(), CNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pre = Shampoo(model, opt)  # default scaling: graft
    assert (pre.scaling, pre.damping, pre.update_interval, pre.running_avg) == (
        "graft",
        1e-3,
        10,
        None,
    )
    plain = Shampoo(twin, torch.optim.SGD(twin.parameters(), lr=0.1), scaling=None)
    for t in range(3):
        for m in (model, twin):
            m.zero_grad()
            F.cross_entropy(m(batch(m, t)[0]), batch(m, t)[1]).backward()
        raw = {n: q.grad.clone() for n, q in model.named_parameters()}
        pre.step()
        plain.step()
        for n, q in model.named_parameters():
            if n.endswith("bias"):
                assert torch.equal(q.grad, raw[n])
                continue
            p = twin.get_parameter(n).grad
            assert not torch.allclose(p, raw[n])
            torch.testing.assert_close(q.grad.norm(), raw[n].norm())
            torch.testing.assert_close(q.grad, p * raw[n].norm() / p.norm())
        opt.step()
        with torch.no_grad():  # the twin follows the grafted model, so its statistics match
            for q, r in zip(twin.parameters(), model.parameters(), strict=True):
                q.copy_(r)


# ---------------------------------------------------------------------------- 4. stale roots
def test_stale_roots_between_refreshes() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pre = Shampoo(model, opt, update_interval=3, scaling=None)
    record = run(model, opt, pre, 1)
    roots = {k: v.clone() for k, v in pre.state["0"].items() if k.startswith("R")}
    record += run(model, opt, pre, 2, start=1)
    state = pre.state["0"]
    for k, r in roots.items():
        assert torch.equal(state[k], r)  # steps 1–2 used the roots of step 0
    raws = [step["0"][0] for step in record]
    for i in range(2):
        torch.testing.assert_close(state[f"M0_{i}"], sum(mat(g, i) @ mat(g, i).T for g in raws))
    stale = kron([roots["R0_0"], roots["R0_1"]])
    for step in record[1:]:
        raw, out = step["0"]
        torch.testing.assert_close(out, (stale @ raw.flatten()).reshape(raw.shape))
    run(model, opt, pre, 1, start=3)  # step 3 refreshes
    assert not torch.equal(pre.state["0"]["R0_0"], roots["R0_0"])


# ---------------------------------------------------------------------------- 5. state dict
def test_state_dict_round_trip() -> None:
    hparams = {"update_interval": 2, "max_dim": 12}
    whole = CNN()
    train(whole, 6, **hparams)

    first = CNN()
    _, pre = train(first, 3, **hparams)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": pre.optimizer.state_dict(),
                "pre": pre.state_dict()}, buffer)  # fmt: skip
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = CNN()
    resumed.load_state_dict(saved["model"])
    opt = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    opt.load_state_dict(saved["opt"])
    pre2 = Shampoo(resumed, opt, damping=DAMPING, **hparams)
    pre2.load_state_dict(saved["pre"])
    assert pre2.steps == 3 and set(pre2.state["fc"]) == set(pre.state["fc"])
    run(resumed, opt, pre2, 3, start=3)
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- 6. validation
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"damping": 0.0}, "damping"),
        ({"damping": -1e-3}, "damping"),
        ({"max_dim": 0}, "max_dim"),
        ({"max_dim": 2.5}, "max_dim"),
        ({"max_dim": True}, "max_dim"),
        ({"running_avg": 1.5}, "running_avg"),
        ({"running_avg": 0.0}, "running_avg"),
        ({"update_interval": 0}, "update_interval"),
        ({"merge_dims": "yes"}, "merge_dims"),
        ({"scaling": "adam"}, "scaling"),
    ],
)
def test_bad_hyper_parameters(kwargs: dict, name: str) -> None:
    model = mlp()
    with pytest.raises(ValueError, match=name):
        Shampoo(model, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)

"""Every Kronecker-vector and Kronecker-factor algorithm against explicit float64 matrices.

Each reference builds the damped curvature ``C + γI`` of the paper as a dense matrix
(``torch.kron``) from statistics recomputed in ``dense_reference`` and solves with
``torch.linalg.solve``; running averages and refresh intervals are replayed step by step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from eva import FOOF, KFAC, Eva, EvaF, EvaGradNorm, EvaS
from tests.dense_reference import RecordingNet, dense_solve, eye, factors, grad_matrix, kvs

LAYERS = ("conv1", "conv2", "fc1", "fc2")
Reference = Callable[[int, RecordingNet, dict[str, Tensor], dict], dict[str, Tensor]]


def ema(state: dict, key: object, value: Tensor, xi: float | None) -> Tensor:
    """Eq. 14–15 (``xi=None``: running sum); the first value is taken as is."""
    if key not in state:
        state[key] = value.clone()
    elif xi is None:
        state[key] = state[key] + value
    else:
        state[key] = xi * value + (1 - xi) * state[key]
    return state[key]


def reference_scaling(kind: str | None, p: dict, g: dict, lr: float, kappa: float) -> dict:
    """Eq. 16, KL normalization and grafting, with Python floats."""
    kl = sum(float((p[n] * g[n]).sum()) for n in p)
    if kind == "kl_clip":
        nu = min(1.0, math.sqrt(kappa / (lr**2 * kl)))
        return {n: nu * p[n] for n in p}
    if kind == "kl_norm":
        return {n: p[n] / math.sqrt(kl) for n in p}
    if kind == "graft":
        return {n: p[n] * (g[n].norm() / p[n].norm()) for n in p}
    return p


def run(
    cls: type,
    reference: Reference,
    *,
    steps: int = 5,
    bias: bool = True,
    weight_only: bool = False,
    lr: float = 0.05,
    ref_scaling: str | None = None,
    **kwargs: object,
) -> None:
    """Train ``steps`` steps; after each ``pre.step()`` compare every layer with the reference."""
    torch.manual_seed(0)
    net = RecordingNet(bias=bias)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    pre = cls(net, opt, **kwargs)
    ref_state: dict = {}
    gen = torch.Generator().manual_seed(1)
    for t in range(steps):
        x = torch.randn(6, 3, 9, 8, generator=gen, dtype=torch.float64)
        target = torch.randn(6, 3, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        F.mse_loss(net(x), target).backward()
        if weight_only:
            grads = {n: getattr(net, n).weight.grad.clone() for n in LAYERS}
            biases = {n: getattr(net, n).bias for n in LAYERS}
            raw_bias = {n: b.grad.clone() for n, b in biases.items() if b is not None}
        else:
            grads = {n: grad_matrix(getattr(net, n)) for n in LAYERS}
        expected = reference(t, net, grads, ref_state)
        expected = reference_scaling(ref_scaling, expected, grads, lr, kwargs.get("kl_clip", 0.0))
        pre.step()
        for n in LAYERS:
            layer = getattr(net, n)
            got = layer.weight.grad if weight_only else grad_matrix(layer)
            torch.testing.assert_close(got, expected[n], rtol=1e-8, atol=1e-12, msg=f"{n} t={t}")
        if weight_only:
            for n, b in raw_bias.items():
                assert torch.equal(biases[n].grad, b), f"bias of {n} must stay first-order"
        opt.step()


def eva_reference(xi: float, gamma: float) -> Reference:
    """Eq. 11–13 via the dense ``(v vᵀ + γI)⁻¹ g``, ``v = b̄ ⊗ ā``."""

    def reference(t: int, net: RecordingNet, grads: dict, st: dict) -> dict:
        out = {}
        for n in LAYERS:
            a, b = kvs(net, n)
            v = torch.kron(ema(st, (n, "b"), b, xi), ema(st, (n, "a"), a, xi))
            out[n] = dense_solve(torch.outer(v, v) + gamma * eye(v.numel()), grads[n])
        return out

    return reference


@pytest.mark.parametrize("bias", [True, False])
def test_eva_equals_dense_sherman_morrison(bias: bool) -> None:
    run(Eva, eva_reference(0.7, 0.03), bias=bias, damping=0.03, running_avg=0.7, scaling=None)


@pytest.mark.parametrize("kappa", [1e-7, 10.0])
def test_eva_kl_clip(kappa: float) -> None:
    """Eq. 16 with α = the optimizer's lr: clipping active (small κ) and inactive (large κ)."""
    run(Eva, eva_reference(0.95, 0.1), damping=0.1, running_avg=0.95, kl_clip=kappa,
        ref_scaling="kl_clip")  # fmt: skip


def test_eva_reads_current_lr() -> None:
    """KL clipping uses the lr at each step, so a scheduler changes ν without a second scheduler."""
    torch.manual_seed(0)
    net = RecordingNet()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    pre = Eva(net, opt, kl_clip=1e-9)
    x = torch.randn(4, 3, 9, 8, dtype=torch.float64)
    results = []
    for lr in (1.0, 0.5):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        net(x).square().sum().backward()
        pre.state = {k: {} for k in pre.state}  # same statistics both times
        pre.step()
        results.append(grad_matrix(net.fc2))
    torch.testing.assert_close(results[1], 2 * results[0])


@pytest.mark.parametrize("divide", [False, True])
def test_eva_f_equals_dense(divide: bool) -> None:
    """Eq. 20–21: ``G (ā āᵀ + γI)⁻¹``; by default times γ (see EvaF's docstring)."""
    gamma, xi = 0.05, 0.8

    def reference(t: int, net: RecordingNet, grads: dict, st: dict) -> dict:
        out = {}
        for n in LAYERS:
            a = ema(st, (n, "a"), kvs(net, n)[0], xi)
            c = torch.kron(eye(grads[n].shape[0]), torch.outer(a, a) + gamma * eye(a.numel()))
            out[n] = dense_solve(c, grads[n]) * (1 if divide else gamma)
        return out

    run(EvaF, reference, damping=gamma, running_avg=xi, scaling=None, divide_by_damping=divide)
    run(EvaF, reference, damping=gamma, running_avg=xi, divide_by_damping=divide,
        ref_scaling="kl_norm")  # fmt: skip


def eva_s_reference(xi: float | None, gamma: float) -> Reference:
    """Eq. 22–23 via the dense ``(v vᵀ + γI)⁻¹ g``, ``v = v_1 ⊗ ⋯ ⊗ v_k`` of the weight tensor."""

    def reference(t: int, net: RecordingNet, grads: dict, st: dict) -> dict:
        out = {}
        for n in LAYERS:
            g = grads[n]
            v = torch.ones(1, dtype=g.dtype)
            for i in range(g.dim()):
                mean_i = g.movedim(i, 0).flatten(1).mean(dim=1)
                v = torch.kron(v, ema(st, (n, i), mean_i, xi))
            out[n] = dense_solve(torch.outer(v, v) + gamma * eye(v.numel()), g)
        return out

    return reference


@pytest.mark.parametrize("xi", [None, 0.9])
def test_eva_s_equals_dense(xi: float | None) -> None:
    """Conv weights as 4-D tensors, running sums by default; biases untouched."""
    run(EvaS, eva_s_reference(xi, 0.03), weight_only=True, damping=0.03, running_avg=xi,
        scaling=None)  # fmt: skip


@pytest.mark.parametrize("shape", [(4, 6), (3, 4, 5), (6, 5, 3, 2), (2, 3, 4, 5, 2)])
def test_mode_means_are_the_means_over_all_other_dimensions(shape: tuple[int, ...]) -> None:
    from eva.eva_s import mode_means

    g = torch.randn(*shape, dtype=torch.float64)
    if g.dim() == 4:
        g = g.to(memory_format=torch.channels_last)
    got = mode_means(g)
    assert len(got) == g.dim()
    for i, v in enumerate(got):
        torch.testing.assert_close(v, g.movedim(i, 0).flatten(1).mean(dim=1), rtol=1e-12, atol=0)


def test_eva_s_grafting() -> None:
    run(EvaS, eva_s_reference(None, 0.03), weight_only=True, ref_scaling="graft")


@pytest.mark.parametrize("in_place", [True, False])
def test_eva_s_with_huge_gradients_is_finite_and_exact(in_place: bool, monkeypatch) -> None:
    """Gradients ~1e9 in float32: Π‖v_i‖² of a convolution (~1e70) overflows float32, and
    Eq. 23 as printed gives NaN; the unit-vector form matches the float64 dense solve."""
    from eva.eva_s import mode_means

    if not in_place:  # the reference path, Preconditioner.precondition
        monkeypatch.setattr(EvaS, "in_place_rank_one", False)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    model = torch.nn.Sequential(conv, torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 2))
    pre = EvaS(model, torch.optim.SGD(model.parameters(), lr=0.1), scaling=None)
    model(torch.randn(6, 3, 5, 5)).square().sum().mul(1e7).backward()
    g = conv.weight.grad.double()
    norms = [v.double().square().sum() for v in mode_means(conv.weight.grad)]
    assert not torch.isfinite(torch.stack(norms).float().prod())  # the printed form overflows
    pre.step()
    v = torch.ones(1, dtype=torch.float64)
    for mean in mode_means(g):
        v = torch.kron(v, mean)
    g = g.flatten()  # Sherman–Morrison in float64 (a dense solve is hopeless at cond ~1e72)
    want = (g - v * (v @ g) / (0.03 + v @ v)) / 0.03
    got = conv.weight.grad.double().flatten()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def kfac_reference(xi: float, gamma: float, interval: int, conv_factors: str) -> Reference:
    """Eq. 5 via ``kron(Q + γ_L I, R + γ_R I)``, refreshed every ``interval`` steps."""

    def reference(t: int, net: RecordingNet, grads: dict, st: dict) -> dict:
        out = {}
        for n in LAYERS:
            if t % interval == 0:
                r, q = factors(net, n, conv_factors)
                r, q = ema(st, (n, "r"), r, xi), ema(st, (n, "q"), q, xi)
                pi = math.sqrt(float(r.trace() / r.shape[0]) / float(q.trace() / q.shape[0]))
                gl, gr = math.sqrt(gamma) / pi, math.sqrt(gamma) * pi
                st[n, "c"] = torch.kron(q + gl * eye(q.shape[0]), r + gr * eye(r.shape[0]))
            out[n] = dense_solve(st[n, "c"], grads[n])
        return out

    return reference


@pytest.mark.parametrize("conv_factors", ["reduce", "expand"])
@pytest.mark.parametrize("interval", [1, 2])
def test_kfac_equals_dense(conv_factors: str, interval: int) -> None:
    run(KFAC, kfac_reference(0.8, 0.03, interval, conv_factors), damping=0.03, running_avg=0.8,
        update_interval=interval, conv_factors=conv_factors, scaling=None)  # fmt: skip


def test_kfac_kl_clip_and_no_bias() -> None:
    run(KFAC, kfac_reference(0.95, 0.03, 3, "reduce"), bias=False, update_interval=3,
        kl_clip=1e-6, ref_scaling="kl_clip")  # fmt: skip


def test_kfac_factors_stay_undamped() -> None:
    """The stored factors are the running averages themselves; damping only enters inverses."""
    torch.manual_seed(0)
    net = RecordingNet()
    pre = KFAC(net, torch.optim.SGD(net.parameters(), lr=0.1), update_interval=1)
    net(torch.randn(5, 3, 9, 8, dtype=torch.float64)).square().sum().backward()
    pre.step()
    r, q = factors(net, "fc1")
    torch.testing.assert_close(pre.state["fc1"]["a_factor"], r)
    torch.testing.assert_close(pre.state["fc1"]["g_factor"], q)


def test_kfac_dominates_eva_curvature() -> None:
    """Eq. 19: ``Q ⊗ R ⪰ (b̄ b̄ᵀ) ⊗ (ā āᵀ)`` for the statistics the library collects."""
    torch.manual_seed(0)
    net = RecordingNet()
    net(torch.randn(5, 3, 9, 8, dtype=torch.float64)).square().sum().backward()
    for n in LAYERS:
        (r, q), (a, b) = factors(net, n), kvs(net, n)
        assert torch.linalg.eigvalsh(r - torch.outer(a, a)).min() > -1e-12
        assert torch.linalg.eigvalsh(q - torch.outer(b, b)).min() > -1e-12


def foof_reference(xi: float, gamma: float, interval: int, rank: int | None) -> Reference:
    """Eq. 6 via ``kron(I, R + γI)``; rank 1: ``R`` replaced by ``λ₁ u₁ u₁ᵀ`` (Eq. 24–26)."""

    def reference(t: int, net: RecordingNet, grads: dict, st: dict) -> dict:
        out = {}
        for n in LAYERS:
            if t % interval == 0:
                r = ema(st, (n, "r"), factors(net, n)[0], xi)
                if rank == 1:
                    lam, u = torch.linalg.eigh(r)
                    r = lam[-1] * torch.outer(u[:, -1], u[:, -1])
                st[n, "c"] = torch.kron(eye(grads[n].shape[0]), r + gamma * eye(r.shape[0]))
            out[n] = dense_solve(st[n, "c"], grads[n])
        return out

    return reference


@pytest.mark.parametrize("rank", [None, 1])
def test_foof_equals_dense(rank: int | None) -> None:
    run(FOOF, foof_reference(0.6, 0.03, 2, rank), damping=0.03, running_avg=0.6,
        update_interval=2, rank=rank, scaling=None)  # fmt: skip


def test_foof_rank1_is_exact_for_rank1_factor() -> None:
    """With one sample per batch and no conv, R is rank one: Eq. 26 equals Eq. 6."""
    torch.manual_seed(0)
    results = []
    for rank in (None, 1):
        net = torch.nn.Sequential(torch.nn.Linear(5, 4, bias=False), torch.nn.Tanh(),
                                  torch.nn.Linear(4, 2, bias=False)).double()  # fmt: skip
        net.load_state_dict(results[0][1]) if results else None
        pre = FOOF(net, torch.optim.SGD(net.parameters(), lr=0.1), rank=rank, scaling=None)
        net(torch.ones(1, 5, dtype=torch.float64)).square().sum().backward()
        pre.step()
        results.append(([p.grad.clone() for p in net.parameters()], net.state_dict()))
    for got, want in zip(results[1][0], results[0][0], strict=True):
        torch.testing.assert_close(got, want)


def test_eva_gradnorm_equals_dense() -> None:
    """Table 9's "w/o KVs": ``(g gᵀ + γI)⁻¹ g`` per layer."""

    def reference(t: int, net: RecordingNet, grads: dict, st: dict) -> dict:
        out = {}
        for n in LAYERS:
            g = grads[n].flatten()
            out[n] = dense_solve(torch.outer(g, g) + 0.03 * eye(g.numel()), grads[n])
        return out

    run(EvaGradNorm, reference, damping=0.03, scaling=None)
    run(EvaGradNorm, reference, damping=0.03, kl_clip=1e-5, ref_scaling="kl_clip")

"""Linear layers on ``(batch, sequence, features)`` inputs: every statistic is a mean over the
batch *and* the positions, i.e. each position is one row, exactly as if the layer saw the
``(batch·sequence, features)`` matrix (the convention of :mod:`eva.statistics`).

Checked against explicit float64 math (:mod:`tests.sequence_reference`: loops over sequences and
positions, ``torch.kron`` and ``torch.linalg.solve``) on a tiny language model with B=3, T=5.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eva import KFAC, Eva, EvaF
from tests.dense_reference import dense_solve, eye, grad_matrix
from tests.sequence_reference import (
    LINEARS,
    SeqNet,
    eva_direction,
    lm_loss,
    position_factors,
    position_means,
    sequence_rows,
    token_batch,
)


def _train(cls: type, steps: int, check, lr: float = 0.05, **options: object) -> None:
    """``steps`` SGD steps of ``cls`` on :class:`SeqNet`; ``check(t, net, raw_grads, state)``
    returns the expected preconditioned ``G`` of each layer, compared after ``pre.step()``."""
    torch.manual_seed(0)
    bias = bool(options.pop("bias", True))
    net = SeqNet(bias=bias)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    pre = cls(net, opt, **options)
    gen = torch.Generator().manual_seed(1)
    state: dict = {}
    for t in range(steps):
        tokens, targets = token_batch(gen)
        opt.zero_grad()
        lm_loss(net(tokens), targets).backward()
        raw = {n: grad_matrix(getattr(net, n)) for n in LINEARS}
        emb_grad = net.emb.weight.grad.clone()
        expected = check(t, net, raw, state)
        pre.step()
        for n in LINEARS:
            got = grad_matrix(getattr(net, n))
            torch.testing.assert_close(got, expected[n], rtol=1e-9, atol=1e-13, msg=f"{n} t={t}")
        assert torch.equal(net.emb.weight.grad, emb_grad), "the embedding stays first-order"
        opt.step()


def _ema(state: dict, key: object, value: torch.Tensor, xi: float) -> torch.Tensor:
    state[key] = value.clone() if key not in state else xi * value + (1 - xi) * state[key]
    return state[key]


def _eva_check(gamma: float, xi: float, kappa: float | None = None, lr: float = 0.05, **means):
    def check(t: int, net: SeqNet, raw: dict, state: dict) -> dict:
        out = {}
        for n in LINEARS:
            a_bar, b_bar = position_means(net, n, **means)
            a_bar, b_bar = _ema(state, (n, "a"), a_bar, xi), _ema(state, (n, "b"), b_bar, xi)
            out[n] = eva_direction(a_bar, b_bar, raw[n], gamma)
        if kappa is not None:  # Eq. 16 with α = the optimizer's lr
            kl = sum(float((out[n] * raw[n]).sum()) for n in LINEARS)
            nu = min(1.0, math.sqrt(kappa / (lr**2 * kl)))
            out = {n: nu * p for n, p in out.items()}
        return out

    return check


@pytest.mark.parametrize("bias", [True, False])
def test_eva_kronecker_vectors_are_batch_and_position_means(bias: bool) -> None:
    """Eq. 13 with ā, b̄ averaged over all B·T rows, running-averaged over 4 steps."""
    _train(Eva, 4, _eva_check(0.03, 0.7), bias=bias, damping=0.03, running_avg=0.7, scaling=None)


def test_eva_kl_clip_on_sequences() -> None:
    _train(Eva, 3, _eva_check(0.1, 0.95, kappa=1e-6), damping=0.1, running_avg=0.95,
           kl_clip=1e-6)  # fmt: skip


def test_a_per_sequence_convention_is_told_apart() -> None:
    """The reference can fail: b̄ as the mean over sequences of the *sum* over positions (T
    times larger) gives a clearly different step, and the library does not produce it."""
    torch.manual_seed(0)
    net = SeqNet()
    pre = Eva(net, torch.optim.SGD(net.parameters(), lr=0.1), scaling=None)
    tokens, targets = token_batch(torch.Generator().manual_seed(3))
    lm_loss(net(tokens), targets).backward()
    raw = grad_matrix(net.fc2)
    a_bar, b_bar = position_means(net, "fc2")
    summed = eva_direction(a_bar, b_bar * tokens.shape[1], raw, 0.03)
    wanted = eva_direction(a_bar, b_bar, raw, 0.03)
    assert (summed - wanted).abs().max() > 1e-3 * wanted.abs().max()
    pre.step()
    torch.testing.assert_close(grad_matrix(net.fc2), wanted, rtol=1e-9, atol=1e-13)


def test_eva_stat_batch_takes_whole_sequences() -> None:
    """``stat_batch=2``: ā, b̄ from the first 2 sequences, all of their positions."""
    _train(Eva, 2, _eva_check(0.03, 0.9, sequences=2), damping=0.03, running_avg=0.9,
           scaling=None, stat_batch=2)  # fmt: skip


def test_eva_f_input_vector_is_the_position_mean() -> None:
    """Eq. 21 (times γ, EvaF's default form): ``γ G (ā āᵀ + γI)⁻¹`` with ā over B·T rows."""
    gamma, xi = 0.05, 0.8

    def check(t: int, net: SeqNet, raw: dict, state: dict) -> dict:
        out = {}
        for n in LINEARS:
            a = _ema(state, (n, "a"), position_means(net, n)[0], xi)
            c = torch.kron(eye(raw[n].shape[0]), torch.outer(a, a) + gamma * eye(a.numel()))
            out[n] = dense_solve(c, raw[n]) * gamma
        return out

    _train(EvaF, 3, check, damping=gamma, running_avg=xi, scaling=None)


@pytest.mark.parametrize("interval", [1, 2])
def test_kfac_step_uses_batch_and_position_factors(interval: int) -> None:
    """Eq. 4–5 with ``R``, ``Q`` the mean outer products over all B·T rows, running-averaged
    and refreshed every ``interval`` steps: ``(Q + γ_L I)⁻¹ G (R + γ_R I)⁻¹``."""
    gamma, xi = 0.03, 0.8

    def check(t: int, net: SeqNet, raw: dict, state: dict) -> dict:
        out = {}
        for n in LINEARS:
            if t % interval == 0:
                r, q = position_factors(net, n)
                r, q = _ema(state, (n, "r"), r, xi), _ema(state, (n, "q"), q, xi)
                pi = math.sqrt(float(r.trace() / r.shape[0]) / float(q.trace() / q.shape[0]))
                left, right = math.sqrt(gamma) / pi, math.sqrt(gamma) * pi
                state[n, "c"] = torch.kron(q + left * eye(q.shape[0]), r + right * eye(r.shape[0]))
            out[n] = dense_solve(state[n, "c"], raw[n])
        return out

    _train(KFAC, 4, check, damping=gamma, running_avg=xi, update_interval=interval, scaling=None)


def test_kfac_stored_factors_are_position_means() -> None:
    """The undamped factors K-FAC keeps (its ``state_dict``) after one refresh."""
    torch.manual_seed(0)
    net = SeqNet()
    pre = KFAC(net, torch.optim.SGD(net.parameters(), lr=0.1), update_interval=1)
    tokens, targets = token_batch(torch.Generator().manual_seed(5))
    lm_loss(net(tokens), targets).backward()
    pre.step()
    for n in LINEARS:
        r, q = position_factors(net, n)
        torch.testing.assert_close(pre.state_dict()["layers"][n]["a_factor"], r)
        torch.testing.assert_close(pre.state_dict()["layers"][n]["g_factor"], q)


def test_rows_helper_counts_every_position() -> None:
    """The reference itself: B·T rows per layer, the bias row entry 1."""
    torch.manual_seed(0)
    net = SeqNet()
    tokens, targets = token_batch(torch.Generator().manual_seed(2))
    lm_loss(net(tokens), targets).backward()
    a_rows, b_rows = sequence_rows(net, "fc1")
    assert (len(a_rows), len(a_rows[0])) == (3, 5) and len(b_rows[2]) == 5
    assert all(float(a[-1]) == 1.0 for seq in a_rows for a in seq)


@pytest.mark.parametrize("cls", [Eva, KFAC, EvaF])
def test_sequence_input_equals_flattened_batch(cls: type) -> None:
    """A linear layer on ``(B, T, d)`` is preconditioned exactly as on ``(B·T, d)`` with the
    same batch-mean loss: positions are samples."""
    x = torch.randn(3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = torch.randn(3, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for flat in (False, True):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        pre = cls(net, opt, update_interval=1)
        grads = []
        for _ in range(3):
            opt.zero_grad()
            inputs, wanted = (x.reshape(15, 4), target.reshape(15, 2)) if flat else (x, target)
            F.mse_loss(net(inputs), wanted).backward()
            pre.step()
            grads.append([p.grad.clone() for p in net.parameters()])
            opt.step()
        results.append(grads)
    for seq_step, flat_step in zip(*results, strict=True):
        for got, want in zip(seq_step, flat_step, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)

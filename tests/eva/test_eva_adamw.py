"""Eva in front of AdamW (``conf/optimizer/eva_adamw.yaml``): the parameters follow AdamW, written
out by hand, applied to Eva's rewritten gradients, themselves computed by dense float64 math
(Eq. 13 as a ``torch.linalg.solve``; Eq. 16 with α = AdamW's current lr)."""

from __future__ import annotations

import math

import torch

from eva import Eva
from tests.sequence_reference import (
    LINEARS,
    SeqNet,
    eva_direction,
    lm_loss,
    position_means,
    token_batch,
)

LR, BETAS, EPS, WEIGHT_DECAY = 0.01, (0.9, 0.99), 1e-8, 0.1
GAMMA, XI, KAPPA = 0.03, 0.9, 7e-5  # clips the first two steps (α²·pᵀg ≈ 4e-4, 9e-5, 6e-5, 1e-5)


def _lr_at(step: int) -> float:
    """The schedule both sides follow (halving every step): KL clipping must read the new lr."""
    return LR * 0.5**step


def _adamw(params: dict, grads: dict, moments: dict, step: int, lr: float) -> None:
    """AdamW (Loshchilov & Hutter), in place: decoupled decay, then the bias-corrected step."""
    b1, b2 = BETAS
    for name, p in params.items():
        g = grads[name]
        m, v = moments.setdefault(name, (torch.zeros_like(p), torch.zeros_like(p)))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        moments[name] = (m, v)
        m_hat, v_hat = m / (1 - b1**step), v / (1 - b2**step)
        params[name] = p * (1 - lr * WEIGHT_DECAY) - lr * m_hat / (v_hat.sqrt() + EPS)


def _split(net: SeqNet, name: str, p: torch.Tensor) -> dict[str, torch.Tensor]:
    """A layer's ``G``-shaped matrix back into weight and bias entries."""
    layer = getattr(net, name)
    n_in = layer.weight.shape[1]
    return {f"{name}.weight": p[:, :n_in], f"{name}.bias": p[:, n_in]}


def test_eva_on_adamw_matches_adamw_on_hand_computed_eva_gradients() -> None:
    torch.manual_seed(0)
    net = SeqNet()
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.AdamW(
        net.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    pre = Eva(net, opt, damping=GAMMA, running_avg=XI, kl_clip=KAPPA)
    gen = torch.Generator().manual_seed(1)
    averages: dict = {}
    moments: dict = {}
    clipped = []
    for step in range(4):
        tokens, targets = token_batch(gen)
        opt.zero_grad()
        lm_loss(net(tokens), targets).backward()
        # the reference: Eva's rewritten gradients from dense math, then AdamW by hand
        raw = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
        precond = {}
        for name in LINEARS:
            a_bar, b_bar = position_means(net, name)
            for key, value in (("a", a_bar), ("b", b_bar)):
                old = averages.get((name, key))
                averages[name, key] = value if old is None else XI * value + (1 - XI) * old
            g = torch.cat([raw[f"{name}.weight"], raw[f"{name}.bias"][:, None]], dim=1)
            precond[name] = (eva_direction(averages[name, "a"], averages[name, "b"], g, GAMMA), g)
        lr = _lr_at(step)
        kl = sum(float((p * g).sum()) for p, g in precond.values())
        nu = min(1.0, math.sqrt(KAPPA / (lr**2 * kl)))
        clipped.append(nu < 1)
        rewritten = dict(raw)
        for name, (p, _) in precond.items():
            rewritten |= _split(net, name, nu * p)
        _adamw(params, rewritten, moments, step + 1, lr)
        # the library
        pre.step()
        for name, grad in rewritten.items():
            torch.testing.assert_close(
                dict(net.named_parameters())[name].grad, grad, rtol=1e-9, atol=1e-13
            )
        opt.step()
        sched.step()
        for name, p in net.named_parameters():
            torch.testing.assert_close(p.detach(), params[name], rtol=1e-9, atol=1e-12)
    assert any(clipped) and not all(clipped), clipped  # both regimes of Eq. 16 were exercised


def test_eva_adamw_config_builds_adamw_with_eva(compose) -> None:
    from hydra.utils import instantiate

    cfg = compose(["optimizer=eva_adamw"]).optimizer
    net = SeqNet()
    optimizer = instantiate(cfg.base, params=net.parameters())
    pre = instantiate(cfg.preconditioner, model=net, optimizer=optimizer)
    assert type(optimizer) is torch.optim.AdamW and type(pre) is Eva
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (cfg.lr, cfg.weight_decay)
    assert (pre.damping, pre.running_avg, pre.kl_clip) == (0.03, 0.95, 0.001)

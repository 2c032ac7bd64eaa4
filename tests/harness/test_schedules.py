"""``harness.schedules.build_schedule``: per-iteration warmup, multistep, cosine, linear, constant,
and the learning rate KL clipping reads follows it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import eva
import eva.preconditioner
from harness.schedules import SCHEDULES, build_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

LR = 0.4


def lrs(name: str, total: int, warmup: int = 0, **kwargs) -> list[float]:
    """The lr in effect at iterations 0..total (index ``total``: after the last step)."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=LR)
    schedule = build_schedule(optimizer, name, total, warmup, **kwargs)
    out = []
    for _ in range(total + 1):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return out


@pytest.mark.parametrize("name", SCHEDULES)
def test_warmup_starts_at_lr_over_warmup_and_reaches_lr(name):
    warmup = 10
    values = lrs(name, 100, warmup)
    assert values[0] == pytest.approx(LR / warmup)
    assert values[warmup] == pytest.approx(LR)
    ramp = values[: warmup + 1]
    assert all(b > a for a, b in zip(ramp, ramp[1:]))
    assert max(values) == pytest.approx(LR)


@pytest.mark.parametrize("warmup", [0, 10])
def test_multistep_decays_at_35_75_90_percent(warmup):
    total = 200
    values = lrs("multistep", total, warmup)
    for step, factor in [(warmup, 1), (69, 1), (70, 0.1), (149, 0.1), (150, 0.01), (179, 0.01)]:
        assert values[step] == pytest.approx(LR * factor), step
    assert values[180] == pytest.approx(LR * 1e-3)
    assert values[total] == pytest.approx(LR * 1e-3)


def test_multistep_custom_milestones_and_gamma():
    values = lrs("multistep", 100, milestones=(0.5,), gamma=0.5)
    assert values[49] == pytest.approx(LR) and values[50] == pytest.approx(LR / 2)
    assert values[100] == pytest.approx(LR / 2)


@pytest.mark.parametrize("warmup", [0, 10])
def test_cosine_anneals_to_zero(warmup):
    total = 100
    values = lrs("cosine", total, warmup)
    middle = warmup + (total - warmup) // 2
    assert values[middle] == pytest.approx(LR / 2, rel=0.05)
    assert values[total - 1] < 1e-3 * LR
    assert values[total] == pytest.approx(0, abs=1e-12)
    decay = values[warmup:]
    assert all(b <= a for a, b in zip(decay, decay[1:]))


@pytest.mark.parametrize("warmup", [0, 10])
def test_linear_decays_to_zero(warmup):
    total = 100
    values = lrs("linear", total, warmup)
    assert values[warmup] == pytest.approx(LR)
    assert values[total] == pytest.approx(0, abs=1e-12)
    steps = [a - b for a, b in zip(values[warmup:], values[warmup + 1 :])]
    assert steps == pytest.approx([LR / (total - warmup)] * (total - warmup))


def test_constant_keeps_lr():
    assert lrs("constant", 50) == pytest.approx([LR] * 51)


def test_warmup_longer_than_the_run_is_cut_to_the_run():
    values = lrs("cosine", 5, warmup=50)
    assert values[0] == pytest.approx(LR / 5) and values[5] == pytest.approx(LR)


def test_unknown_name_is_a_value_error_naming_the_key():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    with pytest.raises(ValueError, match="schedule.name") as info:
        build_schedule(optimizer, "exponential", 10)
    assert "exponential" in str(info.value) and "\n" not in str(info.value)


def test_kl_clipping_reads_the_scheduled_lr(monkeypatch):
    """The α of Eq. 16 is ``param_groups[0]["lr"]`` at each step: it follows the schedule."""
    seen: list[float] = []
    original = eva.scaling.kl_clip_factor

    def spy(kl_size, lr, kappa):
        seen.append(float(lr))
        return original(kl_size, lr, kappa)

    for module in (eva.scaling, eva.rank_one):  # the generic and the in-place step
        monkeypatch.setattr(module, "kl_clip_factor", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    preconditioner = eva.Eva(model, optimizer, damping=0.03, kl_clip=0.001)
    schedule = build_schedule(optimizer, "multistep", total_steps=10, warmup_steps=4)
    expected = []
    for _ in range(10):
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        expected.append(optimizer.param_groups[0]["lr"])
        preconditioner.step()
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx(expected)
    assert seen == pytest.approx(lrs("multistep", 10, 4)[:10])
    assert len(set(seen)) > 3  # warmup and decay both visible

"""Kronecker-vector statistics (Eq. 10) against their definition: every im2col patch, averaged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import eva
from eva import Eva, statistics
from eva.statistics import batch_mean, grad_mean, input_mean, patches
from tests.dense_reference import im2col_rows
from tests.helpers import DTYPE, sgd

CONVS = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=1, stride=2),
    dict(kernel_size=(3, 5), padding=(2, 1), stride=(2, 1), dilation=(1, 2)),
    dict(kernel_size=1),
    dict(kernel_size=7, padding=3, stride=2),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=2, stride=3),  # the stride leaves rows and columns unused
    dict(kernel_size=(1, 7), padding=(0, 3)),  # Inception's factorised convolutions
    dict(kernel_size=(7, 1), padding=(3, 0)),
]


@pytest.fixture
def fresh_operators():
    """No patch operator cached from another test (their form depends on PATCH_MATRIX_MAX)."""
    statistics.clear_caches()
    yield
    statistics.clear_caches()


@pytest.mark.parametrize("options", CONVS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("route", ["one matrix", "two axis matrices"])
def test_conv_input_mean_is_the_mean_patch(options, bias, route, monkeypatch, fresh_operators):
    if route == "two axis matrices":
        monkeypatch.setattr(statistics, "PATCH_MATRIX_MAX", 0)
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, bias=bias, **options).double()
    x = torch.randn(5, 3, 11, 13, dtype=torch.float64)
    every_patch = (
        patches(conv, x).transpose(1, 2).reshape(-1, 3 * conv.kernel_size[0] * conv.kernel_size[1])
    )
    expected = every_patch.mean(dim=0)
    if bias:
        expected = torch.cat([expected, expected.new_ones(1)])
    torch.testing.assert_close(input_mean(conv, x, bias), expected, rtol=1e-12, atol=1e-12)
    channels_last = x.to(memory_format=torch.channels_last)  # the two-step route
    torch.testing.assert_close(
        input_mean(conv, channels_last, bias), expected, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_conv_grad_mean_is_the_mean_over_samples_and_positions(layout):
    gy = torch.randn(5, 4, 7, 6, dtype=torch.float64)
    if layout == "channels_last":
        gy = gy.to(memory_format=torch.channels_last)
    want = gy.permute(0, 2, 3, 1).reshape(-1, 4).mean(0)
    torch.testing.assert_close(grad_mean(nn.Conv2d(3, 4, 3), gy), want, rtol=1e-12, atol=1e-12)
    seq = torch.randn(3, 5, 4, dtype=torch.float64)  # a linear layer on a sequence
    torch.testing.assert_close(grad_mean(nn.Linear(2, 4), seq), seq.reshape(-1, 4).mean(0))


def test_linear_input_mean_and_batch_mean():
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    torch.testing.assert_close(input_mean(nn.Linear(6, 2), x, False), x.reshape(-1, 6).mean(0))
    torch.testing.assert_close(batch_mean(x), x.mean(0))
    strided = x.transpose(1, 2)  # not contiguous: the plain reduction
    torch.testing.assert_close(batch_mean(strided), strided.mean(0))


@pytest.mark.parametrize("options", CONVS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("bias", [False, True])
def test_conv_mean_plan_is_the_mean_patch(options, bias, fresh_operators):
    """The prepared route equals input_mean (checked against every patch above), where it
    applies; paddings it does not take give no plan."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, bias=bias, **options).double()
    x = torch.randn(5, 3, 11, 13, dtype=torch.float64)
    plan = statistics.mean_plan(conv, x)
    if not statistics.zero_padded(conv):
        assert plan is None
        return
    assert plan is not None and plan.fits(x)
    torch.testing.assert_close(plan(x, bias), input_mean(conv, x, bias), rtol=1e-12, atol=1e-12)
    assert statistics.mean_plan(conv, x[0]) is None  # unbatched: input_mean's route


@pytest.mark.parametrize("shape", [(7, 6), (4, 3, 6)])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_mean_plan_is_the_mean_row(shape, bias):
    x = torch.randn(*shape, dtype=torch.float64)
    plan = statistics.mean_plan(nn.Linear(6, 2), x)
    assert plan is not None and plan.fits(x)
    torch.testing.assert_close(plan(x, bias), input_mean(nn.Linear(6, 2), x, bias))
    assert statistics.mean_plan(nn.Linear(6, 2), x[0, 0]) is None  # one vector


def test_mean_plan_fits_only_inputs_like_its_own(fresh_operators):
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    plan = statistics.mean_plan(nn.Conv2d(3, 4, 3, padding=1).double(), x)
    assert plan is not None and plan.fits(x)
    assert not plan.fits(x.float())
    assert not plan.fits(x.to(memory_format=torch.channels_last))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not plan.fits(x)
    huge = torch.zeros(1, 1, 1100, 1100)  # patch operator above PATCH_MATRIX_MAX: two axis matrices
    assert statistics.mean_plan(nn.Conv2d(1, 1, 3, padding=1), huge) is None


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

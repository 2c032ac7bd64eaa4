"""Kronecker-vector statistics (Eq. 10) against their definition: every im2col patch, averaged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eva.statistics import batch_mean, input_mean, patches

CONVS = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=1, stride=2),
    dict(kernel_size=(3, 5), padding=(2, 1), stride=(2, 1), dilation=(1, 2)),
    dict(kernel_size=1),
    dict(kernel_size=7, padding=3, stride=2),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=2, stride=3),  # the stride leaves rows and columns unused
]


@pytest.mark.parametrize("options", CONVS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("bias", [False, True])
def test_conv_input_mean_is_the_mean_patch(options, bias):
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


def test_linear_input_mean_and_batch_mean():
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    torch.testing.assert_close(input_mean(nn.Linear(6, 2), x, False), x.reshape(-1, 6).mean(0))
    torch.testing.assert_close(batch_mean(x), x.mean(0))
    strided = x.transpose(1, 2)  # not contiguous: the plain reduction
    torch.testing.assert_close(batch_mean(strided), strided.mean(0))


@pytest.mark.parametrize("name", ["Eva", "EvaF"])
def test_eva_batches_layers_of_equal_shape_exactly(name):
    """Batched Eq. 13 / Eq. 21 (layers of one shape in one computation) equal the per-layer ones."""
    import eva as lib

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3), nn.Linear(3, 6)
    ).double()
    eva = getattr(lib, name)(model, torch.optim.SGD(model.parameters(), lr=0.1))
    model(torch.randn(8, 6, dtype=torch.float64)).pow(2).sum().backward()
    eva.step()  # statistics in the state
    model(torch.randn(8, 6, dtype=torch.float64)).pow(2).sum().backward()
    grads = [eva.gradient(layer) for layer in eva.layers]
    batched = eva.precondition_all(eva.layers, grads)
    single = [
        eva.precondition(l, eva.state[l.name], g) for l, g in zip(eva.layers, grads, strict=True)
    ]
    assert len({tuple(g.shape) for g in grads}) < len(grads)  # some layers share a shape
    for got, want, g in zip(batched, single, grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert got.data_ptr() != g.data_ptr()


def test_a_subclass_that_changes_the_math_is_not_batched():
    from eva import Eva

    class Halved(Eva):
        def precondition(self, layer, state, grad):
            return super().precondition(layer, state, grad) / 2

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)).double()
    pre = Halved(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for _ in range(2):
        model(torch.randn(3, 4, dtype=torch.float64)).sum().backward()
        if pre.steps == 0:
            pre.step()
    grads = [pre.gradient(layer) for layer in pre.layers]
    got = pre.precondition_all(pre.layers, grads)
    want = [
        Eva.precondition(pre, l, pre.state[l.name], g) / 2
        for l, g in zip(pre.layers, grads, strict=True)
    ]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)

"""Tests of models.autoencoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import Autoencoder


def test_default_is_the_papers_8_layer_network() -> None:
    model = Autoencoder()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    sizes = [(m.in_features, m.out_features) for m in linears]
    widths = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
    assert sizes == list(zip(widths[:-1], widths[1:]))
    # ReLU after every layer but the 30-unit code layer and the output layer.
    assert len([m for m in model.modules() if isinstance(m, nn.ReLU)]) == 6
    assert isinstance(model.encoder[-1], nn.Linear) and isinstance(model.decoder[-1], nn.Linear)


def test_forward_shapes_and_code_is_linear() -> None:
    torch.manual_seed(0)
    model = Autoencoder(dims=(16, 8, 3))
    x = torch.rand(5, 16)
    assert model(x).shape == (5, 16)
    assert model(x.reshape(5, 1, 4, 4)).shape == (5, 16)
    code = model.encode(x)
    assert code.shape == (5, 3)
    assert (code < 0).any()  # no ReLU on the code
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [8, 3, 8, 16]


def test_output_is_logits_for_bce() -> None:
    torch.manual_seed(0)
    model = Autoencoder(dims=(10, 6, 2))
    x = torch.rand(4, 10)
    loss = nn.functional.binary_cross_entropy_with_logits(model(x), x)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("dims", [(784,), (), (10, 0, 2)])
def test_bad_dims_is_one_clear_line(dims: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="dims must hold at least two positive widths"):
        Autoencoder(dims=dims)

"""The CIFAR models the registry builds (``models/registry.py``, ``cifar_resnet``, ``vgg``,
``wide_resnet``): published parameter counts, shapes, depths, names.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from models.cifar_resnet import CifarResNet
from models.registry import MODELS, build_model
from models.wide_resnet import wide_resnet
from tests.helpers import n_params

# Published sizes: He et al. 2016 Table 6 (0.27M, 0.46M, 0.85M, 1.7M), Zagoruyko & Komodakis
# 2016 Table 1 (36.5M), the common VGG-19-BN for CIFAR (20.0M), and timm's model cards.
CIFAR_SIZES = {
    "resnet20": 0.27e6,
    "resnet32": 0.46e6,
    "resnet56": 0.85e6,
    "resnet110": 1.7e6,
    "vgg19": 20.0e6,
    "wrn28_10": 36.5e6,
}


@pytest.fixture(scope="module")
def cifar_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(name, num_classes=10) for name in CIFAR_SIZES}


@pytest.mark.parametrize("name", sorted(CIFAR_SIZES))
def test_cifar_parameter_counts(cifar_models: dict[str, nn.Module], name: str) -> None:
    # The papers give two significant digits ("1.7M" for ResNet-110's 1,727,962).
    tolerance = 0.02 if name in ("resnet110", "resnet56") else 0.01
    assert n_params(cifar_models[name]) == pytest.approx(CIFAR_SIZES[name], rel=tolerance)


def test_cifar_exact_counts(cifar_models: dict[str, nn.Module]) -> None:
    # Option A adds no parameters (option B's 1×1 projections would add 2,752).
    exact = {"resnet20": 269_722, "resnet110": 1_727_962, "wrn28_10": 36_479_194}
    assert {k: n_params(cifar_models[k]) for k in exact} == exact


@pytest.mark.parametrize("name", sorted(CIFAR_SIZES))
def test_cifar_forward_shape(cifar_models: dict[str, nn.Module], name: str) -> None:
    with torch.no_grad():
        out = cifar_models[name](torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_num_classes_and_small_wrn() -> None:
    assert build_model("resnet20", num_classes=100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    wrn = wide_resnet(10, 1, num_classes=7, dropout=0.3)
    assert wrn(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert wrn.depth == 10 and wrn.widen == 1
    # WRN-10-1: one block per stage, projection shortcuts at stages 2 and 3 only.
    shortcuts = [m.shortcut for m in (wrn.layer1[0], wrn.layer2[0], wrn.layer3[0])]
    assert shortcuts[0] is None and all(isinstance(s, nn.Conv2d) for s in shortcuts[1:])


@pytest.mark.parametrize(
    ("factory", "depth"),
    [(CifarResNet, 21), (CifarResNet, 2), (wide_resnet, 27)],
)
def test_bad_depth(factory: Callable[..., nn.Module], depth: int) -> None:
    args = (depth,) if factory is CifarResNet else (depth, 1)
    with pytest.raises(ValueError, match="depth must be"):
        factory(*args)


def test_unknown_model_lists_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet21'") as info:
        build_model("resnet21")
    assert all(name in str(info.value) for name in MODELS)


def test_registry_names_and_autoencoder() -> None:
    assert set(MODELS) == {
        "vgg19", "resnet20", "resnet32", "resnet56", "resnet110", "wrn28_10",
        "resnet50", "inception_v4", "vit_b16", "efficientnet_b0", "autoencoder", "gpt",
    }  # fmt: skip
    model = build_model("autoencoder")
    assert model(torch.rand(2, 784)).shape == (2, 784)

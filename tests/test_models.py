"""Model definitions: published parameter counts, shapes, option-A shortcuts, local-only
pretrained loading, the registry, and Eva finding the expected layers of a CIFAR ResNet."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import eva
from models.cifar_resnet import CifarResNet, ShortcutA, resnet20
from models.registry import MODELS, build_model
from models.timm_models import load_local_weights, timm_model
from models.wide_resnet import wide_resnet


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
TIMM_SIZES = {
    "resnet50": 25.6e6,
    "inception_v4": 42.7e6,
    "vit_b16": 86.6e6,
    "efficientnet_b0": 5.3e6,
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


def test_option_a_shortcut_is_parameter_free() -> None:
    model = resnet20()
    shortcuts = [m for m in model.modules() if isinstance(m, ShortcutA)]
    assert len(shortcuts) == 2  # entries of stages 2 and 3
    assert all(n_params(s) == 0 and not list(s.buffers()) for s in shortcuts)
    # Only 3×3 convolutions: 1 stem + 2 per block × 9 blocks; no 1×1 projection.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(c.kernel_size == (3, 3) for c in convs)

    shortcut = ShortcutA(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


def test_eva_finds_resnet20_layers_and_steps() -> None:
    torch.manual_seed(0)
    model = resnet20()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    preconditioner = eva.Eva(model, optimizer)
    names = [layer.name for layer in preconditioner.layers]
    assert len(names) == 20  # 19 convolutions + the linear head
    assert names[0] == "conv1" and names[-1] == "fc"

    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    preconditioner.step()
    optimizer.step()
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert not torch.equal(before[0], after[0].detach())


# (extra timm keywords, input side): small inputs every layer still accepts
SMALL_TIMM_INPUTS: dict[str, tuple[dict, int]] = {
    "resnet50": ({}, 32),
    "inception_v4": ({}, 75),  # its stem's smallest input; 1×7 and 7×1 convolutions
    "vit_b16": ({"img_size": 32}, 32),
    "efficientnet_b0": ({}, 32),  # grouped (depthwise) convolutions: skipped with a warning
}


@pytest.mark.filterwarnings("ignore:eva. skipping grouped convolution")
@pytest.mark.parametrize("name", sorted(SMALL_TIMM_INPUTS))
def test_eva_family_steps_on_timm_models(name: str) -> None:
    """Every layer geometry of the ImageNet models goes through the statistics and the step
    (Inception-v4's 1×k convolutions once failed building their patch operator)."""
    kwargs, size = SMALL_TIMM_INPUTS[name]
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, **kwargs)
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 1])
    for cls in (eva.Eva, eva.EvaF, eva.EvaS):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        preconditioner = cls(model, optimizer)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        preconditioner.step()
        stepped = [layer for layer in preconditioner.layers if layer.has_grad()]
        assert stepped and all(preconditioner.ready(preconditioner.state[x.name]) for x in stepped)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        preconditioner.remove_hooks()


@pytest.mark.parametrize("name", sorted(TIMM_SIZES))
def test_timm_parameter_counts(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(name, num_classes=1000)
    assert n_params(model) == pytest.approx(TIMM_SIZES[name], rel=0.01)


def test_timm_forward_small_input_and_sets_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = build_model("efficientnet_b0", num_classes=10).eval()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_pretrained_round_trip(
    tmp_path, caplog: pytest.LogCaptureFixture, suffix: str
) -> None:
    torch.manual_seed(0)
    source = timm_model("efficientnet_b0", num_classes=1000)
    path = tmp_path / f"effnet{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save(source.state_dict(), path)

    torch.manual_seed(1)
    fresh_head = timm_model("efficientnet_b0", num_classes=10).classifier.weight.detach()
    torch.manual_seed(1)
    with caplog.at_level(logging.INFO, logger="models.timm_models"):
        model = build_model("efficientnet_b0", num_classes=10, pretrained=str(path))
    head_lines = [r for r in caplog.records if "classifier.weight" in r.getMessage()]
    assert len(head_lines) == 1

    loaded, original = model.state_dict(), source.state_dict()
    assert model.classifier.weight.shape == (10, 1280)
    assert torch.equal(model.classifier.weight.detach(), fresh_head)  # head kept its fresh init
    for key, value in loaded.items():
        if not key.startswith("classifier."):
            assert torch.equal(value, original[key]), key


def test_local_pretrained_same_classes_is_exact(tmp_path) -> None:
    source = timm_model("efficientnet_b0", num_classes=10)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": source.state_dict()}, path)  # a wrapped checkpoint
    model = timm_model("efficientnet_b0", num_classes=10, pretrained=path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


def test_local_pretrained_mismatch_outside_head_raises(tmp_path) -> None:
    state = timm_model("efficientnet_b0", num_classes=10).state_dict()
    del state["conv_stem.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="conv_stem.weight"):
        load_local_weights(timm_model("efficientnet_b0", num_classes=10), path)


def test_pretrained_true_is_refused() -> None:
    with pytest.raises(ValueError, match="local file path") as info:
        build_model("resnet50", pretrained=True)
    assert "\n" not in str(info.value)


def test_missing_weights_file(tmp_path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth") as info:
        build_model("efficientnet_b0", pretrained=str(path))
    assert "\n" not in str(info.value)


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

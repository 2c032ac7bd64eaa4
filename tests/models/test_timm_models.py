"""``models/timm_models.py``: published parameter counts, every Eva variant stepping on timm models,
local-only pretrained loading.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.nn.functional as F

import eva
from models.registry import build_model
from models.timm_models import load_local_weights, timm_model
from tests.helpers import n_params

TIMM_SIZES = {
    "resnet50": 25.6e6,
    "inception_v4": 42.7e6,
    "vit_b16": 86.6e6,
    "efficientnet_b0": 5.3e6,
}


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

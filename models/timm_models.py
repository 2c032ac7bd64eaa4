"""ImageNet-scale models from ``timm``, with pretrained weights taken only from local files.

The Eva paper trains ResNet-50 (He et al., CVPR 2016), Inception-v4 (Szegedy et al., "Inception-
v4, Inception-ResNet and the Impact of Residual Connections on Learning", AAAI 2017), ViT-B/16
(Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021) and EfficientNet-B0 (Tan & Le,
"EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019); the
definitions are R. Wightman's ``timm`` library. Nothing is ever downloaded: the model is built
with random weights, and pretrained weights are loaded from a state-dict file you provide.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["TIMM_ALIASES", "load_local_weights", "timm_model"]

log = logging.getLogger(__name__)

TIMM_ALIASES: dict[str, str] = {
    "resnet50": "resnet50",
    "inception_v4": "inception_v4",
    "vit_b16": "vit_base_patch16_224",
    "efficientnet_b0": "efficientnet_b0",
}
"""Short names used by the registry and configs → ``timm`` model names."""


def timm_model(
    name: str,
    num_classes: int = 1000,
    pretrained: str | os.PathLike[str] | bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a ``timm`` model, optionally loading pretrained weights from a local file.

    Args:
        name: A ``timm`` model name (``"resnet50"``, ``"vit_base_patch16_224"``, ...) or a
            short alias from :data:`TIMM_ALIASES` (``"vit_b16"``).
        num_classes: Outputs of the classifier head. Default 1000.
        pretrained: ``False`` (default) for random initialisation, or the path of a state-dict
            file (``.pth``/``.pt``/``.bin`` via ``torch.load``, or ``.safetensors``). If the
            file's head has a different number of classes, the head keeps its fresh
            initialisation; everything else must match exactly.
        **kwargs: Passed on to ``timm.create_model`` (e.g. ``drop_rate``, ``img_size``).

    Returns:
        The model.

    Raises:
        ValueError: ``pretrained=True`` (weights are never downloaded; give a file path).
        FileNotFoundError: the weights file does not exist.
    """
    if pretrained is True:
        raise ValueError(
            f"pretrained=True is not supported for {name!r}: nothing is downloaded, so "
            "pretrained weights must be given as a local file path (pretrained=/path/to/file.pth)"
        )
    path = Path(pretrained) if pretrained not in (False, None, "") else None
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    # Guard: never let timm or huggingface_hub reach the network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    import timm  # imported lazily: building a CIFAR model should not pay for timm

    model = timm.create_model(
        TIMM_ALIASES.get(name, name), pretrained=False, num_classes=num_classes, **kwargs
    )
    if path is not None:
        load_local_weights(model, path)
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Accept the usual training-checkpoint wrappers around the weights.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module names of the classifier head, from timm's ``pretrained_cfg`` (e.g. ``"fc"``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or ()
    if isinstance(heads, str):
        heads = (heads,)
    return tuple(f"{h}." for h in heads)


def load_local_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a local state dict into ``model``, strictly except for a resized classifier head.

    Keys of the classifier head (as named by timm's ``pretrained_cfg["classifier"]``) whose
    shapes differ from the model's — a checkpoint trained for another number of classes — are
    dropped, with one log line; the model's head then keeps its fresh initialisation. Any other
    missing, unexpected or mismatched key is an error.

    Args:
        model: The model to load into (modified in place).
        path: A ``.safetensors`` file or a file ``torch.load`` can read (weights only).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RuntimeError: the state dict does not match the model outside the classifier head.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    state = _read_state_dict(path)
    own = model.state_dict()
    heads = _head_prefixes(model)
    dropped = sorted(
        k for k, v in state.items() if k in own and k.startswith(heads) and own[k].shape != v.shape
    )
    if dropped:
        log.info(
            "%s: classifier head shape differs from the checkpoint; keeping a fresh head, "
            "dropped %s",
            path.name,
            ", ".join(dropped),
        )
        state = {k: v for k, v in state.items() if k not in dropped}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in dropped]
    if missing or unexpected:
        raise RuntimeError(
            f"{path} does not match the model: missing keys {missing}, unexpected keys {unexpected}"
        )

"""Model names used by configs and scripts → factories.

``build_model("resnet110", num_classes=10)`` builds a model by name; :data:`MODELS` lists them.
CIFAR models take ``num_classes`` (and ``dropout`` for WRN); the timm models take
``num_classes``, ``pretrained`` (a local file path) and any ``timm.create_model`` keyword; the
autoencoder takes ``dims``; the ``gpt`` language model takes ``vocab_size``, ``context``,
``n_layer``, ``n_head``, ``d_model``, ``dropout`` and ``tie_weights`` (:class:`models.gpt.GPT`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from models.cifar_resnet import resnet20, resnet32, resnet56, resnet110
from models.timm_models import TIMM_ALIASES, timm_model
from models.vgg import vgg19
from models.wide_resnet import wrn28_10

__all__ = ["MODELS", "build_model"]


def autoencoder(**kwargs: Any) -> nn.Module:
    """The deep autoencoder of the paper's Fig. 4 (default dims 784-1000-500-250-30)."""
    from models.autoencoder import Autoencoder  # lazy: defined in its own module

    return Autoencoder(**kwargs)


def gpt(**kwargs: Any) -> nn.Module:
    """The small decoder-only transformer language model (:class:`models.gpt.GPT`)."""
    from models.gpt import GPT

    return GPT(**kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg19": vgg19,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "wrn28_10": wrn28_10,
    **{alias: partial(timm_model, alias) for alias in TIMM_ALIASES},
    "autoencoder": autoencoder,
    "gpt": gpt,
}
"""Every model the configs can name."""


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name``.

    Args:
        name: A key of :data:`MODELS`.
        **kwargs: Passed to the model's factory (e.g. ``num_classes=100``).

    Returns:
        The model, randomly initialised unless ``pretrained`` names a local weights file.

    Raises:
        ValueError: ``name`` is not registered (the message lists the known names).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)

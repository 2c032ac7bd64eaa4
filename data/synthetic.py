"""Seeded random datasets of any shape, for smoke tests, demos and benchmarks without real data.

The same seed always gives the same tensors (a private :class:`torch.Generator` is used; the
global RNG is untouched).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["synthetic_classification", "synthetic_regression"]


def _check(num_samples: int, shape: Sequence[int], label: str) -> tuple[int, ...]:
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    shape = tuple(int(s) for s in shape)
    if any(s < 1 for s in shape):
        raise ValueError(f"{label} must contain positive sizes, got {shape}")
    return shape


def synthetic_classification(
    num_samples: int,
    input_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.uint8,
) -> tuple[Tensor, Tensor]:
    """Random inputs with random labels.

    Args:
        num_samples: Number of samples N.
        input_shape: Shape of one input. Default: ``(3, 32, 32)`` (a CIFAR-sized image).
        num_classes: Labels are drawn uniformly from ``0 .. num_classes - 1``. Default: 10.
        seed: Default: 0.
        dtype: ``torch.uint8`` (default) gives uniform pixels in ``0..255`` that go through
            :class:`data.loader.TensorLoader` like real images; a floating dtype gives standard
            normal values.

    Returns:
        ``(inputs, labels)`` of shapes ``(N, *input_shape)`` and ``(N,)`` (int64).

    Raises:
        ValueError: Negative ``num_samples``, non-positive sizes, or ``num_classes < 1``.
    """
    shape = _check(num_samples, input_shape, "input_shape")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        inputs = torch.randint(0, 256, (num_samples, *shape), generator=g, dtype=torch.uint8)
    elif dtype.is_floating_point:
        inputs = torch.randn((num_samples, *shape), generator=g, dtype=dtype)
    else:
        raise ValueError(f"dtype must be torch.uint8 or a floating dtype, got {dtype}")
    labels = torch.randint(0, num_classes, (num_samples,), generator=g)
    return inputs, labels


def synthetic_regression(
    num_samples: int,
    input_shape: Sequence[int] = (784,),
    target_shape: Sequence[int] | None = None,
    *,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Random float inputs in ``[0, 1)`` with regression targets, or autoencoder pairs.

    Args:
        num_samples: Number of samples N.
        input_shape: Shape of one input. Default: ``(784,)``.
        target_shape: Shape of one target, drawn from a standard normal. Default: None — an
            autoencoder set: the targets are the inputs (the same tensor object).
        seed: Default: 0.

    Returns:
        ``(inputs, targets)`` float32 tensors of shapes ``(N, *input_shape)`` and
        ``(N, *target_shape)`` (or ``targets is inputs``).

    Raises:
        ValueError: Negative ``num_samples`` or non-positive sizes.
    """
    shape = _check(num_samples, input_shape, "input_shape")
    g = torch.Generator().manual_seed(seed)
    inputs = torch.rand((num_samples, *shape), generator=g)
    if target_shape is None:
        return inputs, inputs
    targets = torch.randn(
        (num_samples, *_check(num_samples, target_shape, "target_shape")), generator=g
    )
    return inputs, targets

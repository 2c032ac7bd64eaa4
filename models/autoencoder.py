"""The deep autoencoder of the paper's Fig. 4 (the classic Hinton & Salakhutdinov setup)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Autoencoder(nn.Module):
    """Fully connected autoencoder, mirrored around a linear code layer.

    With the default ``dims`` this is the 8-layer network 784-1000-500-250-30-250-500-1000-784.
    A ReLU follows every linear layer except the code layer (the 30 units) and the output layer.
    The output is a vector of logits: train it with :func:`reconstruction_loss` against the
    input pixels in ``[0, 1]``.

    Args:
        dims: Widths of the encoder from the input down to the code, e.g. ``(784, 1000, 500,
            250, 30)`` (default). The decoder mirrors them, so the network has
            ``2 * (len(dims) - 1)`` linear layers.

    Raises:
        ValueError: ``dims`` has fewer than two entries or a non-positive width.
    """

    def __init__(self, dims: Sequence[int] = (784, 1000, 500, 250, 30)) -> None:
        super().__init__()
        dims = tuple(int(d) for d in dims)
        if len(dims) < 2 or min(dims) < 1:
            raise ValueError(f"dims must hold at least two positive widths, got {dims}")
        self.dims = dims
        self.encoder = self._stack(dims)
        self.decoder = self._stack(dims[::-1])

    @staticmethod
    def _stack(widths: Sequence[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(widths) - 2:  # no activation after the last layer of the stack
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Map inputs of shape ``(N, dims[0])`` (or ``(N, 1, 28, 28)``) to codes ``(N, dims[-1])``.

        Args:
            x: A batch of inputs; anything after the batch dimension is flattened.

        Returns:
            The linear code of each input.
        """
        return self.encoder(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct a batch.

        Args:
            x: A batch of inputs; anything after the batch dimension is flattened.

        Returns:
            Reconstruction logits of shape ``(N, dims[0])``.
        """
        return self.decoder(self.encode(x))


def reconstruction_loss(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The autoencoder's training loss: binary cross-entropy of the logits against the pixels,
    summed over pixels and averaged over the images of the batch (nats per image).

    Used by ``train.py``, the demo and the benchmark.

    Args:
        logits: Reconstruction logits of shape ``(N, D)``.
        images: Target pixels in ``[0, 1]``, same shape.

    Returns:
        A scalar: the mean over images of the per-image loss.
    """
    return F.binary_cross_entropy_with_logits(logits, images, reduction="sum") / images.shape[0]

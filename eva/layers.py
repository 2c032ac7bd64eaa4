"""Layer discovery and the gradient-matrix view of a layer.

A preconditioned layer is an ``nn.Linear`` or ``nn.Conv2d`` (subclasses included). Its gradient is
seen as the matrix ``G`` of the paper (§2.1): ``(d_out, d_in)`` for a linear layer and
``(C_out, C_in·kh·kw)`` for a convolution (the im2col layout), with the bias gradient appended as a
last column when the layer has a bias. Everything else (BatchNorm, LayerNorm, embeddings, grouped
convolutions) is left to the first-order optimizer.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

SupportedModule = nn.Linear | nn.Conv2d


@dataclass(eq=False)
class Layer:
    """One preconditioned layer: its qualified name and module.

    Attributes:
        name: The module's qualified name in the model (``model.named_modules()``).
        module: The ``nn.Linear`` or ``nn.Conv2d`` (or subclass) instance.
    """

    name: str
    module: SupportedModule

    @property
    def is_conv(self) -> bool:
        """Whether the layer is a convolution."""
        return isinstance(self.module, nn.Conv2d)

    @property
    def has_bias(self) -> bool:
        """Whether the layer has a trainable bias (an extra column of ``G``)."""
        bias = self.module.bias
        return bias is not None and bias.requires_grad

    @property
    def weight(self) -> Tensor:
        """The layer's weight parameter."""
        return self.module.weight

    def parameters(self) -> list[nn.Parameter]:
        """Weight (and bias) parameters this layer preconditions."""
        params = [self.module.weight]
        if self.has_bias:
            params.append(self.module.bias)  # type: ignore[arg-type]
        return params

    def has_grad(self) -> bool:
        """Whether every parameter of the layer has a gradient (else the layer is skipped)."""
        if self.module.weight.grad is None:
            return False
        bias = self.module.bias
        return bias is None or not bias.requires_grad or bias.grad is not None

    def grad_matrix(self, with_bias: bool = True) -> Tensor:
        """The gradient as the matrix ``G`` of shape ``(d_out, d_in [+ 1])``.

        Without a bias this is a view of ``weight.grad``: read it, never modify it in place.
        """
        grad = self.weight.grad
        assert grad is not None, f"layer {self.name!r} has no gradient"
        g = grad.reshape(grad.shape[0], -1)
        if with_bias and self.has_bias:
            g = torch.cat([g, self.module.bias.grad.unsqueeze(1)], dim=1)  # type: ignore[union-attr]
        return g

    def set_grad_matrix(self, p: Tensor) -> None:
        """Write ``p`` back into ``.grad`` in place, the last column into the bias if any."""
        weight_grad = self.weight.grad
        assert weight_grad is not None
        n_in = weight_grad[0].numel()
        weight_grad.copy_(p[:, :n_in].reshape_as(weight_grad))
        if p.shape[1] > n_in:
            self.module.bias.grad.copy_(p[:, n_in])  # type: ignore[union-attr]


def find_layers(model: nn.Module, skip_layers: str | Iterable[str] = ()) -> list[Layer]:
    """Find the layers to precondition.

    Args:
        model: The model to scan (``named_modules`` order is kept).
        skip_layers: ``fnmatch`` patterns matched against qualified module names (e.g. ``"fc"``,
            ``"layer4.*"``) and against class names; matching layers are left first-order.

    Returns:
        The supported layers with a trainable weight. A grouped convolution is skipped with one
        warning naming it (its weight is block-diagonal over groups, which one ``G`` cannot
        express).
    """
    patterns = [skip_layers] if isinstance(skip_layers, str) else list(skip_layers)
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d) or not module.weight.requires_grad:
            continue
        if any(fnmatch.fnmatchcase(name, p) or type(module).__name__ == p for p in patterns):
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            warnings.warn(
                f"eva: skipping grouped convolution {name!r} (groups={module.groups}); "
                "its gradients are left to the first-order optimizer",
                stacklevel=3,
            )
            continue
        layers.append(Layer(name, module))
    return layers

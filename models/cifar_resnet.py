"""ResNets for CIFAR of He et al. (2016), as in the Eva paper's CIFAR experiments.

K. He, X. Zhang, S. Ren, J. Sun. "Deep Residual Learning for Image Recognition". CVPR 2016,
§4.2 (CIFAR-10 and analysis): a 3×3 stem convolution with 16 filters, then three stages of
``n`` basic blocks on feature maps of 32×32, 16×16 and 8×8 with 16, 32 and 64 filters, global
average pooling and a linear classifier — ``6n + 2`` weighted layers in all. Shortcuts are
identities; where a block halves the resolution and doubles the width, the shortcut is
"option A": subsample by 2 and pad the new channels with zeros, so it has no parameters.

==========  ===  ==========
model        n   parameters
==========  ===  ==========
ResNet-20     3   0.27 M
ResNet-32     5   0.46 M
ResNet-56     9   0.86 M
ResNet-110   18   1.73 M
==========  ===  ==========
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "ShortcutA",
    "cifar_resnet",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
]


class ShortcutA(nn.Module):
    """Parameter-free "option A" shortcut: spatial subsampling plus zero-padding of channels.

    Args:
        in_channels: Channels of the block's input.
        out_channels: Channels of the block's output (``>= in_channels``); the extra channels
            are zeros, split evenly before and after the input's channels.
        stride: Spatial subsampling factor (the shortcut keeps every ``stride``-th pixel).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"out_channels must be >= in_channels, got {out_channels} < {in_channels}"
            )
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample ``x`` of shape ``(N, C_in, H, W)`` and pad it to ``out_channels``."""
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad lists (left, right) pairs from the last dimension backwards: W, H, then C.
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm, a ReLU between them and after the residual sum.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution (2 at the start of stages 2 and 3). Default 1.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ShortcutA(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 images (He et al. 2016, §4.2).

    Convolutions use Kaiming-normal initialisation (fan-out, ReLU gain), as do the paper's
    models; BatchNorm starts at weight 1, bias 0; the classifier keeps PyTorch's default init.

    Args:
        depth: Number of weighted layers, ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: Outputs of the linear classifier. Default 10.
        in_channels: Channels of the input image. Default 3.

    Raises:
        ValueError: ``depth`` is not of the form ``6n + 2`` with ``n >= 1``.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    """ResNet-``depth`` for CIFAR; see :class:`CifarResNet`."""
    return CifarResNet(depth, num_classes)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (n = 3, ≈0.27 M parameters with 10 classes)."""
    return CifarResNet(20, num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 (n = 5, ≈0.46 M parameters with 10 classes)."""
    return CifarResNet(32, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (n = 9, ≈0.86 M parameters with 10 classes)."""
    return CifarResNet(56, num_classes)


def resnet110(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 (n = 18, ≈1.73 M parameters with 10 classes)."""
    return CifarResNet(110, num_classes)

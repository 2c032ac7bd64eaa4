"""Wide residual networks of Zagoruyko & Komodakis (2016) for CIFAR.

S. Zagoruyko, N. Komodakis. "Wide Residual Networks". BMVC 2016. WRN-d-k has a 3×3 stem
convolution with 16 filters, then three stages of ``n = (d - 4) / 6`` pre-activation "wide
basic" blocks (BN-ReLU-conv3×3-BN-ReLU-[dropout]-conv3×3, after K. He et al., "Identity
Mappings in Deep Residual Networks", ECCV 2016) of widths 16k, 32k and 64k, the last two
starting with stride 2; a 1×1 convolution is the shortcut wherever the shape changes. A final
BN-ReLU, global average pooling and a linear layer give the logits. WRN-28-10 (the Eva paper's
model) has ≈36.5 M parameters with 10 classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WideBasicBlock", "WideResNet", "wide_resnet", "wrn28_10"]


class WideBasicBlock(nn.Module):
    """Pre-activation wide basic block with optional dropout between its two convolutions.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution. Default 1.
        dropout: Dropout probability between the convolutions. Default 0.0 (none).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``conv(dropout(relu(bn(conv(relu(bn(x))))))) + shortcut``."""
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        # A projection shortcut sees the pre-activated input, the identity the raw input.
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-``depth``-``widen`` (Zagoruyko & Komodakis 2016).

    Convolutions use Kaiming-normal initialisation (fan-out, ReLU gain), BatchNorm starts at
    weight 1, bias 0, and the classifier's bias at 0.

    Args:
        depth: Total depth ``6n + 4`` (10, 16, 22, 28, 40, ...). Default 28.
        widen: Widening factor k. Default 10.
        num_classes: Outputs of the classifier. Default 10.
        dropout: Dropout probability inside every block. Default 0.0.
        in_channels: Channels of the input image. Default 3.

    Raises:
        ValueError: ``depth`` is not ``6n + 4``, ``widen`` < 1 or ``dropout`` not in [0, 1).
    """

    def __init__(
        self,
        depth: int = 28,
        widen: int = 10,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n+4 with n >= 1 (10, 16, 28, 40, ...), got {depth}")
        if widen < 1:
            raise ValueError(f"widen must be an integer >= 1, got {widen}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.depth, self.widen = depth, widen
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, padding=1, bias=False)
        self.layer1 = self._stage(widths[0], widths[1], n, 1, dropout)
        self.layer2 = self._stage(widths[1], widths[2], n, 2, dropout)
        self.layer3 = self._stage(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    @staticmethod
    def _stage(
        in_channels: int, out_channels: int, blocks: int, stride: int, dropout: float
    ) -> nn.Sequential:
        layers = [WideBasicBlock(in_channels, out_channels, stride, dropout)]
        layers += [
            WideBasicBlock(out_channels, out_channels, 1, dropout) for _ in range(blocks - 1)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = F.relu(self.bn(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def wide_resnet(depth: int, widen: int, num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-``depth``-``widen``; see :class:`WideResNet`."""
    return WideResNet(depth, widen, num_classes, dropout)


def wrn28_10(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10 (≈36.5 M parameters with 10 classes)."""
    return WideResNet(28, 10, num_classes, dropout)

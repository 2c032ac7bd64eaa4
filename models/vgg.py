"""VGG-19 with BatchNorm, in the form commonly used for CIFAR.

K. Simonyan, A. Zisserman. "Very Deep Convolutional Networks for Large-Scale Image
Recognition". ICLR 2015 — configuration E: sixteen 3×3 convolutions in five groups of widths
64, 128, 256, 512, 512, each group closed by a 2×2 max-pool. As usual for 32×32 inputs
(and following S. Ioffe, C. Szegedy, "Batch Normalization", ICML 2015), a BatchNorm follows
every convolution, and the three large fully connected layers of the ImageNet model are
replaced by one linear layer 512 → ``num_classes`` on the 1×1 feature map left after five
pools. With 10 classes this has ≈20.0 M parameters.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG", "VGG19_CONFIG", "vgg19"]

VGG19_CONFIG: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, 256, "M",
    512, 512, 512, 512, "M",
    512, 512, 512, 512, "M",
)  # fmt: skip
"""Configuration E: output channels of each 3×3 convolution, ``"M"`` for a 2×2 max-pool."""


class VGG(nn.Module):
    """A VGG convolution stack with BatchNorm, global pooling and one linear classifier.

    Convolutions use Kaiming-normal initialisation (fan-out, ReLU gain) with zero bias,
    BatchNorm starts at weight 1, bias 0, and the classifier at N(0, 0.01²) with zero bias.

    Args:
        config: Channels of each convolution and ``"M"`` for each max-pool. Default
            :data:`VGG19_CONFIG`.
        num_classes: Outputs of the classifier. Default 10.
        in_channels: Channels of the input image. Default 3.
    """

    def __init__(
        self,
        config: tuple[int | str, ...] = VGG19_CONFIG,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                width = int(item)
                layers += [
                    nn.Conv2d(channels, width, kernel_size=3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
        self.features = nn.Sequential(*layers)
        # On 32×32 inputs the map is already 1×1 here; pooling keeps other sizes working.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg19(num_classes: int = 10) -> VGG:
    """VGG-19-BN for CIFAR (configuration E, linear head 512 → ``num_classes``)."""
    return VGG(VGG19_CONFIG, num_classes)

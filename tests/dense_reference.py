"""Independent float64 reference for the dense-math tests.

A small network records every supported layer's input and output (with ``retain_grad``), and the
statistics of the paper are recomputed here from those tensors by explicit loops over output
positions — a path that shares nothing with the library's hooks or its unfold-the-mean shortcut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RecordingNet(nn.Module):
    """conv(stride, padding, dilation, non-square kernel) → conv(no bias) → linear → linear.

    ``forward`` records each layer's input and (gradient-retaining) output in ``self.io``.
    """

    def __init__(self, bias: bool = True, in_shape: tuple[int, int, int] = (3, 9, 8)) -> None:
        super().__init__()
        c, h, w = in_shape
        self.conv1 = nn.Conv2d(c, 4, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2),
                               dilation=(1, 2), bias=bias)  # fmt: skip
        self.conv2 = nn.Conv2d(4, 5, kernel_size=3, padding=1, dilation=2, bias=False)
        with torch.no_grad():
            flat = self.conv2(self.conv1(torch.zeros(1, c, h, w))).numel()
        self.fc1 = nn.Linear(flat, 6, bias=bias)
        self.fc2 = nn.Linear(6, 3)
        self.double()
        self.io: dict[str, tuple[Tensor, Tensor]] = {}

    def _run(self, name: str, layer: nn.Module, x: Tensor) -> Tensor:
        y = layer(x)
        y.retain_grad()
        self.io[name] = (x.detach(), y)
        return y

    def forward(self, x: Tensor) -> Tensor:
        x = torch.tanh(self._run("conv1", self.conv1, x))
        x = torch.tanh(self._run("conv2", self.conv2, x))
        x = torch.tanh(self._run("fc1", self.fc1, x.flatten(1)))
        return self._run("fc2", self.fc2, x)


def loop_patches(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Patches ``(N, L, C·kh·kw)`` by slicing the zero-padded input at every output position."""
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    ph, pw = conv.padding  # type: ignore[misc]
    xp = F.pad(x, (pw, pw, ph, ph))
    out_h = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for i in range(out_h):
        for j in range(out_w):
            window = xp[:, :, i * sh : i * sh + dh * (kh - 1) + 1 : dh,
                        j * sw : j * sw + dw * (kw - 1) + 1 : dw]  # fmt: skip
            rows.append(window.flatten(1))
    return torch.stack(rows, dim=1)


def layer_rows(net: RecordingNet, name: str) -> tuple[Tensor, Tensor]:
    """Input rows ``(N, L, d_in[+1])`` and output-gradient rows ``(N, L, d_out)`` of a layer."""
    layer = getattr(net, name)
    x, y = net.io[name]
    if isinstance(layer, nn.Conv2d):
        a = loop_patches(layer, x)
        b = y.grad.flatten(2).transpose(1, 2)
    else:
        a, b = x.unsqueeze(1), y.grad.unsqueeze(1)
    if layer.bias is not None:
        a = torch.cat([a, a.new_ones(*a.shape[:2], 1)], dim=2)
    return a, b


def kvs(net: RecordingNet, name: str) -> tuple[Tensor, Tensor]:
    """Eq. 10: ā and b̄ as means over samples and positions."""
    a, b = layer_rows(net, name)
    return a.mean(dim=(0, 1)), b.mean(dim=(0, 1))


def factors(net: RecordingNet, name: str, conv_factors: str = "reduce") -> tuple[Tensor, Tensor]:
    """Eq. 4 as batch means: ``R = mean a aᵀ``, ``Q = mean b bᵀ`` (reduce or expand rows)."""
    a, b = layer_rows(net, name)
    if conv_factors == "reduce":
        a, b = a.mean(dim=1), b.mean(dim=1)
    else:
        a, b = a.flatten(0, 1), b.flatten(0, 1)
    return a.t() @ a / a.shape[0], b.t() @ b / b.shape[0]


def grad_matrix(layer: nn.Module) -> Tensor:
    """``G`` with the bias column, from the layer's current ``.grad``."""
    g = layer.weight.grad.flatten(1)
    if layer.bias is not None:
        g = torch.cat([g, layer.bias.grad.unsqueeze(1)], dim=1)
    return g.clone()


def dense_solve(c: Tensor, g: Tensor) -> Tensor:
    """``C⁻¹ vec(G)`` with row-major ``vec``, reshaped like ``G``."""
    return torch.linalg.solve(c, g.flatten()).reshape(g.shape)


def eye(n: int) -> Tensor:
    """Identity in float64."""
    return torch.eye(n, dtype=torch.float64)

"""Independent float64 reference for the dense-math tests.

A small network records every supported layer's input and output (with ``retain_grad``), and the
statistics of the paper are recomputed here from those tensors by explicit loops over output
positions — a path that shares nothing with the library's hooks or its unfold-the-mean shortcut.

``run`` trains ``RecordingNet`` with a preconditioner and compares every layer's preconditioned
gradient with a ``Reference`` after each step (``ema`` and ``reference_scaling`` replay
Eq. 14–16); ``im2col_rows`` is an explicit im2col of any convolution (padding modes, dilation,
stride).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
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


def explicit_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom), derived from the module's attributes."""
    if isinstance(conv.padding, str):
        assert conv.padding == "same"
        pads = []
        for k, d in zip(conv.kernel_size, conv.dilation):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return left, right, top, bottom
    ph, pw = conv.padding
    return pw, pw, ph, ph


def im2col_rows(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Explicit im2col by looping over output positions: shape (N, H_out, W_out, C·kh·kw)."""
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = F.pad(x, explicit_padding(conv), mode=mode)
    (kh, kw), (dh, dw), (sh, sw) = conv.kernel_size, conv.dilation, conv.stride
    h_out = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    w_out = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    rows = torch.empty(x.shape[0], h_out, w_out, x.shape[1] * kh * kw, dtype=x.dtype)
    for n in range(x.shape[0]):
        for i in range(h_out):
            for j in range(w_out):
                patch = xp[n, :, i * sh : i * sh + dh * (kh - 1) + 1 : dh,
                           j * sw : j * sw + dw * (kw - 1) + 1 : dw]  # fmt: skip
                rows[n, i, j] = patch.reshape(-1)
    return rows


LAYERS = ("conv1", "conv2", "fc1", "fc2")


Reference = Callable[[int, RecordingNet, dict[str, Tensor], dict], dict[str, Tensor]]


def ema(state: dict, key: object, value: Tensor, xi: float | None) -> Tensor:
    """Eq. 14–15 (``xi=None``: running sum); the first value is taken as is."""
    if key not in state:
        state[key] = value.clone()
    elif xi is None:
        state[key] = state[key] + value
    else:
        state[key] = xi * value + (1 - xi) * state[key]
    return state[key]


def reference_factor(
    kind: str | None, p: dict, g: dict, lr: float, kappa: float
) -> float | list[float] | None:
    """The factor of Eq. 16 (ν), of KL normalization, or of grafting (one per layer, in the
    order of ``p``), with Python floats; None without scaling."""
    kl = sum(float((p[n] * g[n]).sum()) for n in p)
    if kind == "kl_clip":
        return min(1.0, math.sqrt(kappa / (lr**2 * kl)))
    if kind == "kl_norm":
        return 1 / math.sqrt(kl)
    if kind == "graft":
        return [float(g[n].norm() / p[n].norm()) for n in p]
    return None


def reference_scaling(kind: str | None, p: dict, g: dict, lr: float, kappa: float) -> dict:
    """Eq. 16, KL normalization and grafting: ``p`` times :func:`reference_factor`."""
    factor = reference_factor(kind, p, g, lr, kappa)
    if factor is None:
        return p
    each = factor if isinstance(factor, list) else [factor] * len(p)
    return {n: f * p[n] for n, f in zip(p, each, strict=True)}


def run(
    cls: type,
    reference: Reference,
    *,
    steps: int = 5,
    bias: bool = True,
    weight_only: bool = False,
    lr: float = 0.05,
    ref_scaling: str | None = None,
    **kwargs: object,
) -> None:
    """Train ``steps`` steps; after each ``pre.step()`` compare every layer with the reference."""
    torch.manual_seed(0)
    net = RecordingNet(bias=bias)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    pre = cls(net, opt, **kwargs)
    ref_state: dict = {}
    gen = torch.Generator().manual_seed(1)
    for t in range(steps):
        x = torch.randn(6, 3, 9, 8, generator=gen, dtype=torch.float64)
        target = torch.randn(6, 3, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        F.mse_loss(net(x), target).backward()
        if weight_only:
            grads = {n: getattr(net, n).weight.grad.clone() for n in LAYERS}
            biases = {n: getattr(net, n).bias for n in LAYERS}
            raw_bias = {n: b.grad.clone() for n, b in biases.items() if b is not None}
        else:
            grads = {n: grad_matrix(getattr(net, n)) for n in LAYERS}
        expected = reference(t, net, grads, ref_state)
        kappa = kwargs.get("kl_clip", 0.0)
        factor = reference_factor(ref_scaling, expected, grads, lr, kappa)
        expected = reference_scaling(ref_scaling, expected, grads, lr, kappa)
        pre.step()
        kept = pre.scale_factor
        if factor is None:  # the reference does not scale: the step scaled by 1 at most
            assert kept is None or bool((kept == 1).all()), f"t={t}: factor {kept}"
        else:
            assert kept is not None and kept.tolist() == pytest.approx(factor, rel=1e-8), t
        for n in LAYERS:
            layer = getattr(net, n)
            got = layer.weight.grad if weight_only else grad_matrix(layer)
            torch.testing.assert_close(got, expected[n], rtol=1e-8, atol=1e-12, msg=f"{n} t={t}")
        if weight_only:
            for n, b in raw_bias.items():
                assert torch.equal(biases[n].grad, b), f"bias of {n} must stay first-order"
        opt.step()

"""Per-batch curvature statistics of a layer: Kronecker vectors (Eq. 10) and factors (Eq. 4).

``x`` is the layer's input and ``gy`` the gradient of the training loss with respect to its output,
as autograd delivers it (for a batch-mean loss every row carries a 1/n; nothing is rescaled). Rows
of ``A`` are inputs (for a convolution: im2col patches, length ``C_in·kh·kw``), rows of ``B`` are
output gradients; a layer with a bias appends a constant 1 to every input row, so that the bias
gradient is the last column of ``G``.

Convolutions have two conventions for the factors (``conv_factors``):

- ``"reduce"`` (default; what the Eva authors' K-FAC/FOOF ran): one row per sample, the patches
  and output gradients averaged over spatial positions;
- ``"expand"`` (Grosse & Martens, 2016): one row per sample and position.

The Kronecker vectors do not depend on that choice: they are the means over samples and positions.

Linear layers take inputs of any shape ``(..., d_in)``, e.g. a transformer's ``(batch, sequence,
d_in)``: every leading index is one row. ā, b̄ and the factors ``R``, ``Q`` are then means over
the batch *and* the positions, exactly what the layer would give on the ``(batch·sequence, d_in)``
matrix (for the factors that is the per-position "expand" convention; there is no "reduce" form
for linear layers). With a loss averaged over every position, as a language model's, each
output-gradient row carries the ``1/(batch·sequence)`` of that mean. ``stat_batch`` keeps the
first samples along the first dimension: whole sequences, all their positions.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ConvFactors = Literal["reduce", "expand"]
CONV_FACTORS = ("reduce", "expand")


def _batched(t: Tensor, layer: nn.Module) -> Tensor:
    """Give an unbatched convolution input/output its batch dimension back."""
    return t.unsqueeze(0) if isinstance(layer, nn.Conv2d) and t.dim() == 3 else t


def patches(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """im2col patches of ``x`` as the convolution sees them: ``(N, C_in·kh·kw, L)``.

    Padding follows the module exactly (numeric, ``"same"`` and non-zero padding modes).
    """
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
        padding: int | tuple[int, ...] = 0
    else:
        padding = conv.padding  # type: ignore[assignment]
    return F.unfold(
        x, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride
    )


def _append_one(v: Tensor) -> Tensor:
    """Append a column of ones (the bias input) to the last dimension."""
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)


def compiling() -> bool:
    """Whether ``torch.compile`` is tracing the calling code."""
    return torch.compiler.is_compiling()


@functools.lru_cache(maxsize=64)
def _cached_ones_over_n(n: int, device: Any, dtype: Any) -> Tensor:
    return torch.full((n,), 1.0 / n, device=device, dtype=dtype)


def batch_mean(x: Tensor) -> Tensor:
    """The mean over the first dimension, as one matrix-vector product for contiguous ``x``.

    Same math as ``x.mean(dim=0)``; on the CPU the BLAS product streams the batch about a third
    faster than the dim-0 reduction (this pass over every layer's input is most of Eva's cost).
    Under ``torch.compile`` the plain reduction, which Inductor fuses with the op that produced
    ``x`` (and a gradient hook may not branch on its argument's layout).
    """
    n = x.shape[0]
    if compiling() or x.dim() < 2 or not x.is_contiguous():
        return x.mean(dim=0)
    ones = _cached_ones_over_n(n, x.device, x.dtype)
    return (ones @ x.reshape(n, -1)).view(x.shape[1:])


def _taps(
    size: int, kernel: int, stride: int, dilation: int, padding: int, device: Any = None
) -> tuple[Tensor, int]:
    """Along one spatial axis: the ``(kernel, size)`` 0/1 matrix whose entry ``(i, h)`` says that
    kernel tap ``i`` reads input position ``h`` at some output position, and the output length.
    Positions in the (zero) padding match no column: they add nothing to a sum. Built without
    data-dependent shapes, so that ``torch.compile`` traces it in one graph, and on ``device``
    itself: no host-to-device copy, so no host synchronisation even on first use."""
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    kernel_taps = torch.arange(kernel, device=device).unsqueeze(1) * dilation
    taps = kernel_taps + torch.arange(out, device=device) * stride - padding
    # a tap reads each position at most once (its positions increase with the output index)
    return (taps.unsqueeze(2) == torch.arange(size, device=device)).sum(1), out


PATCH_MATRIX_MAX = 1 << 20
"""Largest ``H·W·kh·kw`` for which :func:`patch_mean` uses one cached ``(H·W, kh·kw)`` matrix
(4 MiB in float32; every CIFAR layer and the interior layers of ImageNet networks)."""


def _patch_operators(
    geometry: tuple[tuple[int, int, int, int, int], ...], device: Any, dtype: Any
) -> tuple[Tensor, ...]:
    """The linear maps from one ``(C, H, W)`` image to its mean im2col patch (see
    :func:`patch_mean`): the ``(H·W, kh·kw)`` matrix ``(Rᵀ ⊗ Sᵀ) / L`` when it is small, else
    the two axis matrices ``R / L`` and ``S``."""
    (rows, oh), (cols, ow) = (_taps(*g, device=device) for g in geometry)
    rows, cols = rows.to(dtype) / (oh * ow), cols.to(dtype)
    if rows.numel() * cols.numel() <= PATCH_MATRIX_MAX:
        # Rᵀ ⊗ Sᵀ written out (torch.kron fails on the transposed (H, 1) matrix of a 1×k kernel)
        kron = torch.einsum("ih,jw->hwij", rows, cols)
        return (kron.reshape(kron.shape[0] * kron.shape[1], -1),)
    return rows, cols.t()


_cached_patch_operators = functools.lru_cache(maxsize=1024)(_patch_operators)
"""Eager calls reuse the matrices; under ``torch.compile`` they are built (and folded) in the
graph."""


def clear_caches() -> None:
    """Forget the cached patch operators and 1/n vectors (after changing ``PATCH_MATRIX_MAX``)."""
    _cached_patch_operators.cache_clear()
    _cached_ones_over_n.cache_clear()


def zero_padded(conv: nn.Conv2d) -> bool:
    """Numeric zero padding: the case the patch operators take (others unfold), and where a
    convolution saves its input itself (no padded copy, :mod:`eva.saved_input`)."""
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _geometry(conv: nn.Conv2d, h: int, w: int) -> tuple[tuple[int, ...], ...]:
    """Per spatial axis: (size, kernel, stride, dilation, padding), the patch operators' key."""
    return tuple(zip((h, w), conv.kernel_size, conv.stride, conv.dilation, conv.padding))  # type: ignore[arg-type]


def patch_mean(conv: nn.Conv2d, image: Tensor) -> Tensor:
    """The mean im2col patch of one ``(C, H, W)`` image, without unfolding it.

    Entry ``(c, i, j)`` is the mean over output positions of the padded input at row
    ``i·dilation + oh·stride`` and column ``j·dilation + ow·stride``, i.e. ``R · image[c] · Sᵀ / L``
    with ``R``/``S`` the 0/1 "tap reads position" matrices of the two axes and ``L`` the number
    of output positions. Flattened over ``(h, w)`` that is one product ``image · (Rᵀ ⊗ Sᵀ) / L``
    with a small cached ``(H·W, kh·kw)`` matrix; for large images and kernels (a ViT patch
    embedding) the two axis products instead. Numeric zero padding only; other paddings unfold.
    """
    if not zero_padded(conv):
        return patches(conv, image.unsqueeze(0))[0].mean(dim=1)
    c, h, w = image.shape
    build = _patch_operators if compiling() else _cached_patch_operators
    operators = build(_geometry(conv, h, w), image.device, image.dtype)  # type: ignore[arg-type]
    if len(operators) == 1:
        return (image.reshape(c, h * w) @ operators[0]).reshape(-1)
    rows, cols_t = operators
    return (rows @ image @ cols_t).reshape(-1)


def conv_input_mean(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """:func:`patch_mean` of :func:`batch_mean` for a batch ``(N, C, H, W)``; where a
    :class:`MeanPlan` applies, the two are one chain of two matrix products,
    ``(1ᵀ/N · X) · (Rᵀ ⊗ Sᵀ)/L``."""
    plan = mean_plan(conv, x)
    if plan is not None and plan.fits(x):
        return plan(x, False)
    return patch_mean(conv, batch_mean(x))


class MeanPlan:
    """ā of Eq. 10 for one layer's inputs of one shape, dtype and device, as at most two matrix
    products with constants prepared once: ``1ᵀ/N · X`` for a linear layer (``X`` the input as
    ``(N, d_in)`` rows), ``(1ᵀ/N · X) · (Rᵀ ⊗ Sᵀ)/L`` for a convolution (:func:`conv_input_mean`).

    The same value as :func:`input_mean`; it saves the per-call work of finding the route (the
    hooks run it for every layer at every step, and at small batches that work is most of the
    statistics' cost). Built by :func:`mean_plan`; call it only on inputs it :meth:`fits`.
    """

    __slots__ = ("dtype", "device", "device_type", "rows", "width", "ones", "image", "operator")

    def __init__(
        self, x: Tensor, rows: int, image: tuple[int, int] | None, operator: Tensor | None
    ) -> None:
        self.dtype, self.device, self.device_type = x.dtype, x.device, x.device.type
        self.rows, self.width = rows, x.numel() // rows
        self.ones = _cached_ones_over_n(rows, x.device, x.dtype).unsqueeze(0)
        self.image, self.operator = image, operator

    def fits(self, x: Tensor) -> bool:
        """Whether ``x`` (of the shape the plan was made for) can take it: same dtype and
        device, contiguous, no autocast (which would lower the products), not compiling."""
        return (
            x.dtype is self.dtype
            and x.device == self.device
            and x.is_contiguous()
            and not torch.is_autocast_enabled(self.device_type)
            and not compiling()
        )

    def __call__(self, x: Tensor, bias: bool) -> Tensor:
        a = torch.mm(self.ones, x.view(self.rows, self.width))
        if self.operator is not None:
            a = torch.mm(a.view(self.image), self.operator)  # type: ignore[arg-type]
        a = a.view(-1)
        return _append_one(a) if bias else a


def mean_plan(layer: nn.Module, x: Tensor) -> MeanPlan | None:
    """A :class:`MeanPlan` for inputs shaped, typed and placed like ``x``, or ``None`` where
    :func:`input_mean` takes another route (a convolution's unbatched input, non-zero padding or
    a large patch operator; ``torch.compile``)."""
    if compiling() or x.dim() < 2 or x.numel() == 0:
        return None
    if isinstance(layer, nn.Conv2d):
        if x.dim() != 4 or not zero_padded(layer):
            return None
        n, c, h, w = x.shape
        operators = _cached_patch_operators(_geometry(layer, h, w), x.device, x.dtype)  # type: ignore[arg-type]
        if len(operators) != 1:
            return None
        return MeanPlan(x, n, (c, h * w), operators[0])
    return MeanPlan(x, x.numel() // x.shape[-1], None, None)


def input_mean(layer: nn.Module, x: Tensor, bias: bool) -> Tensor:
    """ā of Eq. 10: the mean input row (for a convolution the mean im2col patch; for a linear
    layer on ``(batch, sequence, d_in)`` the mean over batch and positions).

    For a convolution the batch is averaged first and the mean patch taken of that one image:
    unfold is linear, so the result equals the mean over all samples and positions without
    materialising any patch (:func:`patch_mean`).
    """
    x = _batched(x, layer)
    if isinstance(layer, nn.Conv2d):
        a = conv_input_mean(layer, x)
    else:
        a = batch_mean(x.reshape(-1, x.shape[-1]))
    return _append_one(a) if bias else a


def grad_mean(layer: nn.Module, gy: Tensor) -> Tensor:
    """b̄ of Eq. 10: the mean output-gradient row (convolutions: over samples and positions;
    linear layers: over all leading dimensions, e.g. batch and sequence positions).

    Not called where b̄ is zero by construction (the layer feeds only a BatchNorm using batch
    statistics: :mod:`eva.batchnorm`), nor where the layer's bias gradient gives it
    (:func:`eva.capture.bias_gradient_node`). Linear layers reduce with :func:`batch_mean` (one
    matrix-vector product: on the CPU about 1.5× faster than ``mean(0)`` on a GPT's (4096, 512)
    output gradients, measured in the backward pass)."""
    gy = _batched(gy, layer)
    if isinstance(layer, nn.Conv2d):
        return gy.mean(dim=(0, 2, 3))
    return batch_mean(gy.reshape(-1, gy.shape[-1]))


def _outer_mean(rows: Tensor) -> Tensor:
    """``rowsᵀ rows / n``: the mean outer product of the rows."""
    return rows.t() @ (rows / rows.shape[0])


def input_factor(layer: nn.Module, x: Tensor, bias: bool, conv_factors: ConvFactors) -> Tensor:
    """R of Eq. 4 (as a batch mean): ``mean_i a_i a_iᵀ`` over the input rows (for a linear
    layer every leading index, e.g. every (sample, position), is a row)."""
    x = _batched(x, layer)
    if isinstance(layer, nn.Conv2d):
        p = patches(layer, x)
        rows = p.mean(dim=2) if conv_factors == "reduce" else p.transpose(1, 2).flatten(0, 1)
    else:
        rows = x.reshape(-1, x.shape[-1])
    return _outer_mean(_append_one(rows) if bias else rows)


def grad_factor(layer: nn.Module, gy: Tensor, conv_factors: ConvFactors) -> Tensor:
    """Q of Eq. 4 (as a batch mean): ``mean_i b_i b_iᵀ`` over the output-gradient rows (for a
    linear layer every leading index is a row)."""
    gy = _batched(gy, layer)
    if isinstance(layer, nn.Conv2d):
        if conv_factors == "reduce":
            rows = gy.mean(dim=(2, 3))
        else:
            rows = gy.flatten(2).transpose(1, 2).flatten(0, 1)
    else:
        rows = gy.reshape(-1, gy.shape[-1])
    return _outer_mean(rows)

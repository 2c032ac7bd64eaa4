"""The tensor operations of the rank-one step (:mod:`eva.rank_one`): ``G v`` and ``‖G‖²`` without
forming ``G``, the fused CPU write-back ``G ← f s G + (f u) vᵀ``, the zero-padded row stacks
that let one equation run for all layers at once, and the guard against subnormal products.
Each is written twice where the CPU and an accelerator differ in what is fast
(:data:`CPU_FORMS`); the tests run both forms and compare."""

from __future__ import annotations

import torch
from torch import Tensor

from eva.layers import Layer


def weight_matrix(layer: Layer) -> Tensor | None:
    """``weight.grad`` as a ``(d_out, d_in)`` view, or None when its layout allows no view
    (e.g. a channels-last convolution)."""
    grad = layer.weight.grad
    if grad is None or not grad.is_contiguous():
        return None
    return grad.view(grad.shape[0], -1)


def grad_times(weight: Tensor, bias: Tensor | None, v: Tensor, out: Tensor | None = None) -> Tensor:
    """``G v`` for ``G = [weight | bias]`` (or ``weight``) without forming ``G`` (into ``out``
    when given)."""
    if bias is None:
        return torch.mv(weight, v, out=out)
    return torch.addmv(bias * v[-1], weight, v[:-1], out=out)


def row_dot(x: Tensor, y: Tensor) -> Tensor:
    """``xᵀy`` with a trailing size-1 dimension, for vectors or row by row for stacks of them: the
    same equation code serves one layer (1-D) and all layers at once (zero-padded rows, see
    :attr:`eva.rank_one.RankOnePreconditioner.rank_one_batched`)."""
    return (x * y).sum(-1, keepdim=True)


def drop_subnormal_products(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``u`` and ``v`` (stacks of rows: one ``u vᵀ`` per row) with the entries zeroed whose every
    product in ``u vᵀ`` would be subnormal or zero: ``|u_i|·‖v‖_∞`` resp. ``‖u‖_∞·|v_j|`` below
    the smallest normal number of the dtype.

    Why: on x86 CPUs an operation with a subnormal result takes a microcode assist, tens of
    times slower, and PyTorch leaves flush-to-zero off. A ReLU unit that stays dead has exactly
    zero statistics (b̄ of its output, ā of its input), so their running averages shrink by
    ``1 − ξ`` per step and, for some twenty steps on their way to zero, ``u vᵀ`` (``u`` ∝ b̄,
    ``v = ā``) writes subnormal numbers into the gradient, which the optimizer's step then reads
    (the 8-layer autoencoder at batch 1000 does this within its first few dozen steps; the
    ``make bench-linear`` record is measured with this function in place). Each dropped product
    is smaller than the smallest normal number, the change flush-to-zero would make.
    """
    tiny = torch.finfo(u.dtype).tiny
    u_abs, v_abs = u.abs(), v.abs()
    u_max, v_max = u_abs.amax(-1, keepdim=True), v_abs.amax(-1, keepdim=True)
    return u.masked_fill(u_abs * v_max < tiny, 0), v.masked_fill(v_abs * u_max < tiny, 0)


CPU_FORMS = True
"""On CPU tensors, take the forms that are faster there (BLAS dot products for the norms, one fused
``addmm_`` pass for the write-back); ``False`` runs the accelerator forms (``torch._foreach``
kernels, no host values) everywhere. The tests run both and compare."""


def cpu_forms(t: Tensor) -> bool:
    """Whether ``t``'s step takes the CPU forms (:data:`CPU_FORMS`)."""
    return CPU_FORMS and t.device.type == "cpu"


def squared_norms(tensors: list[Tensor]) -> Tensor:
    """``‖t‖²`` of every tensor, stacked. One ``_foreach_norm`` kernel on an accelerator; on the
    CPU one BLAS dot product each, which streams large gradients several times faster (VGG-19's
    76 MiB of gradients, on the 2-core CPU of the benchmark records)."""
    if not cpu_forms(tensors[0]):
        return torch.stack(torch._foreach_norm(tensors)).square()
    zero = tensors[0].new_zeros(())  # for empty tensors (no bias): no dot product each
    return torch.stack(
        [torch.dot(t.reshape(-1), t.reshape(-1)) if t.numel() else zero for t in tensors]
    )


def write_fused(
    weights: list[Tensor],
    biases: list[Tensor | None],
    us: list[Tensor],
    vs: list[Tensor],
    factors: Tensor | float,
    scale: float,
) -> None:
    """``G ← f s G + (f u) vᵀ`` on the CPU, layer by layer, in one pass over each gradient:
    ``addmm_`` with the factors as numbers (a CPU tensor's value costs no synchronisation)
    instead of a ``mul_`` pass and an ``addcmul_`` pass; products ``f u_i v_j`` that would be
    subnormal are dropped (:func:`drop_subnormal_products`), as in the batched CPU step."""
    if isinstance(factors, Tensor):
        values = factors.tolist()
        each = values if isinstance(values, list) else [values] * len(weights)
    else:
        each = [factors] * len(weights)
    for w, b, u, v, f in zip(weights, biases, us, vs, each, strict=True):
        fu, v = drop_subnormal_products(u * f, v)
        w.addmm_(fu.unsqueeze(1), v[: w.shape[1]].unsqueeze(0), beta=f * scale)
        if b is not None:
            b.mul_(f * scale).addcmul_(fu, v[-1:])


class RowStack:
    """A zero matrix whose row ``i`` starts with layer ``i``'s vector: per-layer vectors of
    different lengths as one ``(L, max length)`` tensor. The padding is never written, so it
    stays zero; the matrix, its row views and the views derived from them (:meth:`heads`,
    :meth:`entries`) are kept from step to step: each view is one more operator call, and on the
    CPU such calls, not arithmetic, are most of a step's cost outside the gradient passes."""

    def __init__(self, lengths: list[int], like: Tensor) -> None:
        self.matrix = like.new_zeros(len(lengths), max(lengths))
        self.lengths = lengths
        self.rows = [row[:n] for row, n in zip(self.matrix, lengths, strict=True)]
        self._views: dict[tuple[str, tuple[int, ...]], list[Tensor]] = {}

    def heads(self, widths: list[int]) -> list[Tensor]:
        """The first ``widths[i]`` entries of every row ``i`` (``v`` without its bias entry)."""
        key = ("heads", tuple(widths))
        views = self._views.get(key)
        if views is None:
            views = [row[:n] for row, n in zip(self.matrix, widths, strict=True)]
            self._views[key] = views
        return views

    def entries(self, rows: list[int], positions: list[int]) -> list[Tensor]:
        """Entry ``positions[k]`` of row ``rows[k]``, as length-1 views (``v``'s bias entry)."""
        key = ("entries", (*rows, *positions))
        views = self._views.get(key)
        if views is None:
            views = [self.matrix[i, p : p + 1] for i, p in zip(rows, positions, strict=True)]
            self._views[key] = views
        return views

"""Shampoo: one inverse 2k-th root per tensor dimension (§2.2, Eq. 7–8)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eva.layers import Layer
from eva.options import Options, check_bool, check_int
from eva.preconditioner import Preconditioner


def merged_shape(shape: torch.Size, max_dim: int, merge_dims: bool = True) -> tuple[int, ...]:
    """The shape a weight tensor is preconditioned in.

    With ``merge_dims``, size-1 dimensions are dropped and the dimensions after the first (the
    output dimension, never merged) are merged right to left while the product stays
    ``≤ max_dim``: ``(C_out, C_in, kh, kw)`` becomes ``(C_out, C_in·kh·kw)`` when
    ``C_in·kh·kw ≤ max_dim``, else e.g. ``(C_out, C_in, kh·kw)``. Without it, ``shape`` as is.
    """
    if not merge_dims or len(shape) < 2:
        return tuple(shape)
    groups: list[int] = []
    for d in reversed([d for d in shape[1:] if d != 1] or [1]):
        if groups and groups[-1] * d <= max_dim:
            groups[-1] *= d
        else:
            groups.append(d)
    return (shape[0], *reversed(groups))


def blocks(t: Tensor, shape: tuple[int, ...], max_dim: int) -> list[Tensor]:
    """The blocks of ``t`` reshaped to ``shape``: every dimension larger than ``max_dim`` cut into
    chunks of ``max_dim`` (the last one smaller). For a contiguous ``t`` they are views: writing
    into them writes ``t``."""
    views = [t.reshape(shape)]
    for dim, size in enumerate(shape):
        if size > max_dim:
            views = [chunk for v in views for chunk in v.split(max_dim, dim)]
    return views


def mode_statistics(block: Tensor) -> list[Tensor]:
    """Eq. 7: ``M_i = mat_i(G) mat_i(G)ᵀ`` for every dimension ``i`` of ``block``."""
    dims = range(block.dim())
    return [torch.tensordot(block, block, dims=([j for j in dims if j != i],) * 2) for i in dims]


def inverse_root(m: Tensor, damping: float, order: int, dtype: torch.dtype) -> Tensor:
    """``(M + γI)^(-1/order)`` of a symmetric ``M`` via ``eigh`` in float64; negative
    eigenvalues (rounding) are clamped to 0 before adding γ. Returned in ``dtype``."""
    eigenvalues, q = torch.linalg.eigh(m.double())
    scale = (eigenvalues.clamp(min=0) + damping).pow(-1.0 / order)
    return ((q * scale) @ q.mT).to(dtype)


class Shampoo(Preconditioner):
    """Shampoo (Eq. 8): ``P = G ×_1 (M_1 + γI)^(-1/2k) ×_2 ⋯ ×_k (M_k + γI)^(-1/2k)``.

    Acts on each layer's weight gradient as a tensor (see below for its shape); biases stay
    first-order. The statistics ``M_i`` of Eq. 7 are accumulated at *every* step; by default
    (``running_avg=None``) as running sums, as in the original Shampoo (Gupta et al., 2018);
    ``running_avg=ξ`` gives Eq. 14's average instead. The roots are recomputed every
    ``update_interval`` steps (``eigh`` in float64, eigenvalues clamped at 0, then ``+ γ``) and
    the stale roots are used in between. Each layer's ``P`` is then rescaled to ``‖G‖``
    (grafting, as for Eva-s), the default ``scaling``.

    Large dimensions. ``eigh`` costs O(d³) and each factor O(d²) memory, so no factor is larger
    than ``max_dim``, by two means (as Distributed Shampoo does):

    - *merging* (``merge_dims=True``): the dimensions after the output dimension are merged right
      to left while their product stays ``≤ max_dim``, and size-1 dimensions are dropped. A
      conv weight ``(C_out, C_in, kh, kw)`` thus becomes the matrix ``(C_out, C_in·kh·kw)`` of
      K-FAC and Eva (when ``C_in·kh·kw ≤ max_dim``) instead of keeping kh×kw factors: such tiny
      factors carry little information, and every extra dimension shrinks each root's exponent.
      The output dimension is kept apart so that a layer is always preconditioned from both
      sides, as Eq. 8 on matrices (the paper's comparison) assumes, and a small layer does not
      turn into one full-matrix AdaGrad factor.
    - *blocking*: a dimension still larger than ``max_dim`` is cut into chunks of ``max_dim``
      (the last one smaller); the tensor is thereby partitioned into independent blocks, each
      with its own statistics and roots. ``k`` is the order of the (merged) tensor.

    State (per layer, round-trips through ``state_dict``): ``M{b}_{i}`` and ``R{b}_{i}``, the
    statistic and root of dimension ``i`` of block ``b``. Statistics are kept in at least
    float32; roots in the gradient's dtype.

    Args:
        max_dim: Largest factor dimension, an integer ≥ 1. Default 1024.
        merge_dims: Merge small trailing dimensions (see above). Default ``True``.
        **options: As :class:`~eva.preconditioner.Preconditioner`, with the defaults
            ``damping=1e-3`` (added to the eigenvalues of each ``M_i``), ``running_avg=None``
            (running sums), ``scaling="graft"`` (layer-wise grafting to the gradient norm) and
            ``update_interval=10`` (roots recomputed every 10 steps, the paper's CIFAR-10 runs).
            No statistics are all-reduced: Shampoo reads the already averaged gradients.

    Raises:
        ValueError: a hyper-parameter out of range, or a model with no supported layer.
    """

    defaults: ClassVar[Options] = Options(
        damping=1e-3, running_avg=None, scaling="graft", update_interval=10
    )
    include_bias = False
    allow_running_sum = True
    uses_gradient_statistics = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        max_dim: int = 1024,
        merge_dims: bool = True,
        **options: Any,
    ) -> None:
        check_int("max_dim", max_dim)
        check_bool("merge_dims", merge_dims)
        super().__init__(model, optimizer, **options)
        self.max_dim = max_dim
        self.merge_dims = merge_dims

    def _blocks(self, t: Tensor) -> list[Tensor]:
        return blocks(t, merged_shape(t.shape, self.max_dim, self.merge_dims), self.max_dim)

    def gradient_statistics(self, layer: Layer, grad: Tensor) -> dict[str, Tensor]:
        """Eq. 7 for every block of the weight gradient, at every step."""
        dtype = torch.promote_types(grad.dtype, torch.float32)
        return {
            f"M{b}_{i}": m
            for b, block in enumerate(self._blocks(grad))
            for i, m in enumerate(mode_statistics(block.to(dtype)))
        }

    def update_states(
        self, updates: list[tuple[Layer, dict[str, Tensor], dict[str, Tensor]]]
    ) -> None:
        """Accumulate the statistics; on refresh steps (or where none exist) recompute the
        roots."""
        super().update_states(updates)
        for layer, state, current in updates:
            if not self.refresh_step and "R0_0" in state:
                continue
            order = 2 * len(merged_shape(layer.weight.shape, self.max_dim, self.merge_dims))
            dtype = layer.weight.dtype
            for key in current:  # "M{b}_{i}" -> "R{b}_{i}"
                state["R" + key[1:]] = inverse_root(state[key], self.damping, order, dtype)

    def precondition(self, layer: Layer, state: dict[str, Tensor], grad: Tensor) -> Tensor:
        """Eq. 8 for every block: ``G ×_1 R_1 ⋯ ×_k R_k``."""
        out = torch.empty_like(grad, memory_format=torch.contiguous_format)
        for b, (g, p) in enumerate(zip(self._blocks(grad), self._blocks(out), strict=True)):
            for i in range(g.dim()):
                # ×_i R_i on dimension 0, the result appended last: after k contractions the
                # dimensions are back in their original order
                g = torch.tensordot(g, state[f"R{b}_{i}"], dims=([0], [1]))
            p.copy_(g)
        return out

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, max_dim={self.max_dim}, merge_dims={self.merge_dims})"

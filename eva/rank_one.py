"""The step of algorithms whose preconditioned gradient is a rank-one correction of ``G``.

Eva (Eq. 13), Eva-f (Eq. 21) and Eva-s (Eq. 23, with ``G`` seen as a ``(d_1, d_2·…·d_k)``
matrix) precondition every layer as::

    P = s·G + u vᵀ

with a scalar ``s`` shared by all layers (``1/γ`` or 1), ``v`` from the layer's state (``ā``, or
``v_2 ∘ ⋯ ∘ v_k``) and ``u`` from ``G v`` (and the state). The step then needs ``G`` only through
``G v`` and ``‖G‖²``:

- the KL size of Eq. 16 / §4.1 is ``Σ_l p_lᵀ g_l = s Σ_l ‖G_l‖² + Σ_l u_lᵀ (G_l v_l)``;
- grafting (§4.2) needs ``‖P_l‖² = s²‖G_l‖² + 2s u_lᵀ(G_l v_l) + ‖u_l‖²‖v_l‖²``;
- the scaled update ``f P`` is written into ``.grad`` in place: ``G ← (f s) G``, then
  ``G += (f u) vᵀ``.

So no ``P`` is ever formed or allocated: one read of every gradient for ``G v``, one for the
norms, and two in-place passes, each a single ``torch._foreach`` call over all layers (the
generic path allocates, copies and rescales every gradient several times). On the CPU, where
the factors' values cost no device synchronisation, the two passes are one ``addmm_`` per layer
and the norms BLAS dot products (:data:`CPU_FORMS`; for the batched form see
:meth:`RankOnePreconditioner._step_stacked_cpu`, which also keeps subnormal numbers out of the
gradients, :func:`drop_subnormal_products`). With
``include_bias``, ``G`` has the bias column (§2.1): the bias gradient is read and updated beside
the weight gradient, never concatenated.

Where ``u`` and ``v`` come from per-layer dot products (Eva, Eva-f), those are computed for all
layers at once: the layers' vectors are kept as rows of zero-padded matrices, and the equation,
written with :func:`row_dot`, runs once on the matrices (a GPU step is bound by the number of
kernels it launches, not by this arithmetic).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eva.layers import Layer
from eva.preconditioner import Preconditioner
from eva.scaling import graft_factor, kl_clip_factor, kl_norm_factor


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
    :attr:`RankOnePreconditioner.rank_one_batched`)."""
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


def _cpu_forms(t: Tensor) -> bool:
    return CPU_FORMS and t.device.type == "cpu"


def squared_norms(tensors: list[Tensor]) -> Tensor:
    """``‖t‖²`` of every tensor, stacked. One ``_foreach_norm`` kernel on an accelerator; on the
    CPU one BLAS dot product each, which streams large gradients several times faster (VGG-19's
    76 MiB of gradients, on the 2-core CPU of the benchmark records)."""
    if not _cpu_forms(tensors[0]):
        return torch.stack(torch._foreach_norm(tensors)).square()
    zero = tensors[0].new_zeros(())  # for empty tensors (no bias): no dot product each
    return torch.stack(
        [torch.dot(t.reshape(-1), t.reshape(-1)) if t.numel() else zero for t in tensors]
    )


def _write_fused(
    weights: list[Tensor],
    biases: list[Tensor | None],
    us: list[Tensor],
    vs: list[Tensor],
    factors: Tensor | float,
    scale: float,
) -> None:
    """``G ← f s G + (f u) vᵀ`` on the CPU, in one pass over each gradient: ``addmm_`` with the
    factors as numbers (a CPU tensor's value costs no synchronisation) instead of a ``mul_``
    pass and an ``addcmul_`` pass."""
    if isinstance(factors, Tensor):
        values = factors.tolist()
        each = values if isinstance(values, list) else [values] * len(weights)
    else:
        each = [factors] * len(weights)
    for w, b, u, v, f in zip(weights, biases, us, vs, each, strict=True):
        w.addmm_(u.unsqueeze(1), v[: w.shape[1]].unsqueeze(0), beta=f * scale, alpha=f)
        if b is not None:
            b.mul_(f * scale).addcmul_(u, v[-1:], value=f)


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


class RankOnePreconditioner(Preconditioner):
    """A preconditioner whose equation is ``P = s·G + u vᵀ`` (Eva, Eva-f, Eva-s), stepped in
    place (see the module docstring).

    A subclass gives its equation twice: :meth:`precondition` (the reference, also used for
    gradients whose layout allows no matrix view, e.g. channels-last) and the rank-one form
    (:attr:`rank_one_scale`, :meth:`rank_one_vector`, :meth:`rank_one_correction`); the tests
    compare the two. A subclass that changes :meth:`precondition` without changing the rank-one
    form must set :attr:`in_place_rank_one` to ``False``.
    """

    in_place_rank_one: ClassVar[bool] = True
    """``True``: steps run in place through the rank-one form (:meth:`step_in_place`);
    ``False``: through :meth:`precondition`, scaling and write-back, as any preconditioner."""
    rank_one_batched: ClassVar[bool] = False
    """``True``: :meth:`rank_one_vector` and :meth:`rank_one_correction` also take every layer at
    once, each state entry (and ``G v``) an ``(L, m)`` stack of zero-padded rows, and give stacks
    with zero padding (:func:`row_dot` for the dot products). ``False``: layer by layer. A
    subclass whose rank-one form takes single layers only must set it ``False``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, **options: Any) -> None:
        super().__init__(model, optimizer, **options)
        self.stacks: dict[tuple, RowStack] = {}
        """The zero-padded stacks of the batched form by (tag, lengths, dtype, device), kept
        between steps (a tag is a state key or ``"G v"``)."""

    @property
    def rank_one_scale(self) -> float:
        """``s`` of ``P = s·G + u vᵀ``, the same for every layer."""
        raise NotImplementedError

    def rank_one_vector(self, state: dict[str, Tensor]) -> Tensor:
        """``v`` of ``P = s·G + u vᵀ`` for a layer (length ``d_in`` [+ 1 with a bias])."""
        raise NotImplementedError

    def rank_one_correction(self, state: dict[str, Tensor], gv: Tensor) -> Tensor:
        """``u`` of ``P = s·G + u vᵀ`` for a layer, given ``G v``."""
        raise NotImplementedError

    def in_place_operands(self, layers: list[Layer]) -> list[Tensor] | None:
        """The weight gradients as ``(d_out, d_in)`` views (:func:`weight_matrix`), or ``None``
        where one allows no view or :attr:`in_place_rank_one` is off."""
        if not self.in_place_rank_one:
            return None
        weights = [weight_matrix(layer) for layer in layers]
        return None if any(w is None for w in weights) else weights  # type: ignore[return-value]

    def _stack(self, tag: Hashable, lengths: list[int], like: Tensor) -> RowStack:
        """The kept :class:`RowStack` for ``tag`` and these lengths."""
        key = (tag, tuple(lengths), like.dtype, like.device)
        rows = self.stacks.get(key)
        if rows is None:
            if len(self.stacks) >= 32:  # the set of layers keeps changing: keep the latest
                self.stacks.clear()
            rows = self.stacks[key] = RowStack(lengths, like)
        return rows

    def _stacked(
        self, states: list[dict[str, Tensor]], weights: list[Tensor]
    ) -> tuple[dict[str, RowStack], RowStack] | None:
        """Every state key as an ``(L, m)`` zero-padded stack (one ``_foreach_copy_`` per key),
        and the zero ``(L, max d_out)`` stack that ``G v`` is written into; None when the states
        are not all vectors with the same keys, or the layers do not share one dtype and device."""
        keys = states[0].keys()
        like = weights[0]
        if any(w.dtype != like.dtype or w.device != like.device for w in weights) or any(
            s.keys() != keys
            or any(
                t.dim() != 1 or t.dtype != like.dtype or t.device != like.device for t in s.values()
            )
            for s in states
        ):
            return None
        stacked = {}
        for key in keys:
            vectors = [s[key] for s in states]
            rows = self._stack(key, [t.numel() for t in vectors], like)
            torch._foreach_copy_(rows.rows, vectors)
            stacked[key] = rows
        gv = self._stack("G v", [w.shape[0] for w in weights], like)
        return stacked, gv

    @property
    def _norms_needed(self) -> bool:
        """Whether the scaling reads ``‖G_l‖²`` (not without scaling, nor KL clipping with
        ``kl_clip=None``)."""
        return self.scaling is not None and not (self.scaling == "kl_clip" and self.kl_clip is None)

    def _factors(
        self, scale: float, g_sq: Tensor, ugv: Tensor, uv_sq: Callable[[], Tensor]
    ) -> Tensor:
        """The scaling's factors (see the module docstring) from ``‖G_l‖²``, ``u_lᵀ G_l v_l`` and
        (for grafting only, hence a callable) ``‖u_l‖²‖v_l‖²``: one per layer, or one for all."""
        if self.scaling == "graft":
            p_sq = (scale**2 * g_sq + 2 * scale * ugv + uv_sq()).clamp(min=0)  # rounded ≥ 0
            return graft_factor(p_sq.sqrt(), g_sq.sqrt())
        kl = scale * g_sq.sum() + ugv.sum()  # Σ_l p_lᵀ g_l
        if self.scaling == "kl_clip":
            return kl_clip_factor(kl, self.lr, self.kl_clip)  # type: ignore[arg-type]
        return kl_norm_factor(kl)

    def step_in_place(self, layers: list[Layer], operands: list[Tensor]) -> None:
        """Precondition, scale and write back every layer of ``layers`` (all ready, with weight
        gradients viewed as matrices in ``operands``) in place.

        With :attr:`rank_one_batched`, ``v``, ``u`` and every per-layer scalar are computed for
        all layers at once on zero-padded stacks: a fixed number of kernels whatever the number
        of layers, plus one ``G v`` product per layer (on a GPU the step is bound by kernel
        launches, not arithmetic); on the CPU see :meth:`_step_stacked_cpu`. Otherwise layer by
        layer.
        """
        weights = operands
        scale = self.rank_one_scale
        states = [self.state[layer.name] for layer in layers]
        biases = [
            layer.module.bias.grad if self.include_bias and layer.has_bias else None  # type: ignore[union-attr]
            for layer in layers
        ]
        batched = self.rank_one_batched and self._stacked(states, weights)
        if batched and _cpu_forms(weights[0]):
            self._step_stacked_cpu(weights, biases, *batched, scale)
            return
        with_bias = [i for i, b in enumerate(biases) if b is not None]
        grads: list[Tensor] = [*weights, *(biases[i] for i in with_bias)]  # type: ignore[misc]
        d_in = [w.shape[1] + (b is not None) for w, b in zip(weights, biases, strict=True)]
        if batched:
            stacks, gv_rows = batched
            stacked = {key: rows.matrix for key, rows in stacks.items()}
            gv_matrix = gv_rows.matrix
            v_matrix = self.rank_one_vector(stacked)
            vs = [row[:n] for row, n in zip(v_matrix, d_in, strict=True)]
            for w, b, v, out in zip(weights, biases, vs, gv_rows.rows, strict=True):
                grad_times(w, b, v, out=out)
            u_matrix = self.rank_one_correction(stacked, gv_matrix)
        else:
            vs = [self.rank_one_vector(state) for state in states]
            gvs = [grad_times(w, b, v) for w, b, v in zip(weights, biases, vs, strict=True)]
            us = [self.rank_one_correction(s, gv) for s, gv in zip(states, gvs, strict=True)]

        factors: Tensor | float = 1.0  # one per layer (its bias too), or one for all
        if self._norms_needed:
            none = weights[0].new_zeros(0)  # norm 0 for a layer without a bias
            g_sq = squared_norms(weights) + squared_norms(
                [none if b is None else b for b in biases]
            )  # ‖G_l‖²
            if batched:
                factors = self._factors(
                    scale,
                    g_sq,
                    row_dot(u_matrix, gv_matrix)[:, 0],  # u_lᵀ G_l v_l
                    lambda: (row_dot(u_matrix, u_matrix) * row_dot(v_matrix, v_matrix))[:, 0],
                )
            else:
                factors = self._factors(
                    scale,
                    g_sq,
                    torch.stack([u @ gv for u, gv in zip(us, gvs, strict=True)]),
                    lambda: torch.stack([(u @ u) * (v @ v) for u, v in zip(us, vs, strict=True)]),
                )

        if _cpu_forms(weights[0]):  # (layer by layer: the batched CPU step returned above)
            _write_fused(weights, biases, us, vs, factors, scale)
            return
        if isinstance(factors, Tensor) and factors.dim() == 1:  # per layer
            each = (factors * scale).unbind()
            torch._foreach_mul_(grads, [*each, *(each[i] for i in with_bias)])
        else:
            torch._foreach_mul_(grads, factors * scale)
        if batched:
            if isinstance(factors, Tensor):
                u_matrix = u_matrix * (factors[:, None] if factors.dim() == 1 else factors)
            us = [row[: w.shape[0]] for row, w in zip(u_matrix, weights, strict=True)]
        elif isinstance(factors, Tensor):
            us = torch._foreach_mul(us, list(factors.unbind()) if factors.dim() == 1 else factors)
        torch._foreach_addcmul_(
            weights,
            [u.unsqueeze(1) for u in us],
            [v[: w.shape[1]].unsqueeze(0) for v, w in zip(vs, weights, strict=True)],
        )
        if with_bias:
            torch._foreach_addcmul_(
                [biases[i] for i in with_bias],  # type: ignore[misc]
                [us[i] for i in with_bias],
                [vs[i][-1:] for i in with_bias],
            )

    def _step_stacked_cpu(
        self,
        weights: list[Tensor],
        biases: list[Tensor | None],
        stacks: dict[str, RowStack],
        gv_rows: RowStack,
        scale: float,
    ) -> None:
        """The batched step on the CPU, where the three passes over the weight gradients (``G v``,
        ``‖G‖²``, the write-back), subnormal numbers and the number of operator calls set the
        cost:

        - ``G_l v_l`` and ``‖G_l‖²`` back to back, layer by layer, so that the dot product reads
          the gradient the product has just brought into the cache; the write-back is then one
          ``addr_`` per layer (``G ← f s G + (f u) vᵀ`` in one pass, the factors as numbers);
        - the biases (the last column of ``G``) in one ``torch._foreach`` call per operation;
        - ``v``, ``G v`` and ``f u`` live in kept stacks whose row views are made once
          (:class:`RowStack`), not sliced again at every step;
        - products ``u_i v_j`` that would be subnormal are dropped
          (:func:`drop_subnormal_products`).
        """
        like = weights[0]
        d_w = [w.shape[1] for w in weights]
        d_in = [n + (b is not None) for n, b in zip(d_w, biases, strict=True)]
        d_out = gv_rows.lengths
        with_bias = [i for i, b in enumerate(biases) if b is not None]
        bias_grads: list[Tensor] = [biases[i] for i in with_bias]  # type: ignore[misc]
        bias_at = [d_w[i] for i in with_bias]  # the bias entry of v
        stacked = {key: rows.matrix for key, rows in stacks.items()}
        v_matrix = self.rank_one_vector(stacked)
        v_rows = next((rows for rows in stacks.values() if rows.matrix is v_matrix), None)
        if v_rows is None:  # a vector computed from the state: copied into a stack of its own
            v_rows = self._stack("v", d_in, like)
            v_rows.matrix.copy_(v_matrix)

        norms_needed = self._norms_needed
        w_sq = []
        for w, v, gv in zip(weights, v_rows.heads(d_w), gv_rows.rows, strict=True):
            torch.mv(w, v, out=gv)
            if norms_needed:
                flat = w.view(-1)
                w_sq.append(torch.dot(flat, flat))
        if bias_grads:  # G v += b v_bias
            torch._foreach_addcmul_(
                [gv_rows.rows[i] for i in with_bias], bias_grads, v_rows.entries(with_bias, bias_at)
            )
        gv_matrix = gv_rows.matrix
        u_matrix = self.rank_one_correction(stacked, gv_matrix)

        factors: Tensor | float = 1.0  # one per layer (its bias too), or one for all
        if norms_needed:
            g_sq = torch.stack(w_sq)
            if bias_grads:
                b_sq = torch.stack(torch._foreach_norm(bias_grads)).square()
                g_sq = g_sq.index_add(0, torch.tensor(with_bias), b_sq)
            factors = self._factors(
                scale,
                g_sq,
                row_dot(u_matrix, gv_matrix)[:, 0],
                lambda: (row_dot(u_matrix, u_matrix) * row_dot(v_matrix, v_matrix))[:, 0],
            )

        if isinstance(factors, Tensor):  # as numbers (a CPU tensor's value needs no sync)
            values = factors.tolist()
            each = values if isinstance(values, list) else [values] * len(weights)
            f_rows = factors[:, None] if factors.dim() else factors
        else:
            each, f_rows = [factors] * len(weights), factors
        fu, v_written = drop_subnormal_products(u_matrix * f_rows, v_matrix)
        # written whole at every step and read through their row views only
        fu_rows, v_out = self._stack("f u", d_out, like), self._stack("v written", d_in, like)
        fu_rows.matrix.copy_(fu)
        v_out.matrix.copy_(v_written)
        for w, u, v, f in zip(weights, fu_rows.rows, v_out.heads(d_w), each, strict=True):
            w.addr_(u, v, beta=f * scale)
        if bias_grads:  # b ← f s b + (f u) v_bias
            torch._foreach_mul_(bias_grads, [each[i] * scale for i in with_bias])
            torch._foreach_addcmul_(
                bias_grads, [fu_rows.rows[i] for i in with_bias], v_out.entries(with_bias, bias_at)
            )

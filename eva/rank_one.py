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
and the norms BLAS dot products (:data:`eva.rank_one_ops.CPU_FORMS`; for the batched form see
:meth:`RankOnePreconditioner._step_stacked_cpu`); both CPU forms keep subnormal numbers out of
the gradients (:func:`~eva.rank_one_ops.drop_subnormal_products`). With
``include_bias``, ``G`` has the bias column (§2.1): the bias gradient is read and updated beside
the weight gradient, never concatenated.

Where ``u`` and ``v`` come from per-layer dot products (Eva, Eva-f), those are computed for all
layers at once: the layers' vectors are kept as rows of zero-padded matrices, and the equation,
written with :func:`~eva.rank_one_ops.row_dot`, runs once on the matrices (a GPU step is bound
by the number of kernels it launches, not by this arithmetic). The tensor operations themselves
(``G v``, the norms, the fused write-back, the row stacks) are in :mod:`eva.rank_one_ops`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eva.layers import Layer
from eva.preconditioner import Preconditioner
from eva.rank_one_ops import (
    RowStack,
    cpu_forms,
    drop_subnormal_products,
    grad_times,
    row_dot,
    squared_norms,
    weight_matrix,
    write_fused,
)
from eva.scaling import graft_factor, kl_clip_factor, kl_norm_factor


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
        (for grafting only, hence a callable) ``‖u_l‖²‖v_l‖²``: one per layer, or one for all
        (kept as :attr:`~eva.preconditioner.Preconditioner.scale_factor`)."""
        if self.scaling == "graft":
            p_sq = (scale**2 * g_sq + 2 * scale * ugv + uv_sq()).clamp(min=0)  # rounded ≥ 0
            factors = graft_factor(p_sq.sqrt(), g_sq.sqrt())
        else:
            kl = scale * g_sq.sum() + ugv.sum()  # Σ_l p_lᵀ g_l
            if self.scaling == "kl_clip":
                factors = kl_clip_factor(kl, self.lr, self.kl_clip)  # type: ignore[arg-type]
            else:
                factors = kl_norm_factor(kl)
        self.scale_factor = factors
        return factors

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
        if batched and cpu_forms(weights[0]):
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

        if cpu_forms(weights[0]):  # (layer by layer: the batched CPU step returned above)
            write_fused(weights, biases, us, vs, factors, scale)
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

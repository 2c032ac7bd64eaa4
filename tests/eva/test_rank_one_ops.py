"""The tensor operations of the rank-one step (``eva/rank_one_ops.py``); the step they make is
compared with the generic path in ``test_rank_one.py``."""

from __future__ import annotations

import torch

from eva.rank_one_ops import drop_subnormal_products, write_fused


def test_subnormal_products_are_dropped_and_nothing_else() -> None:
    """``drop_subnormal_products`` zeroes an entry of ``u`` (``v``) only where its products with
    all of ``v`` (``u``) are below the smallest normal number, so each dropped product is one
    that flush-to-zero would drop; no subnormal remains in the rows and columns it cleans."""
    tiny = torch.finfo(torch.float32).tiny
    u = torch.tensor([[1e-3, 1e-37, 1e-39, 2.0], [1e-30, 1.0, 0.0, 0.0]])
    v = torch.tensor([[0.5, 1e-36, 1e-40, 0.0], [1e-10, 3.0, 1e-9, 0.0]])
    fu, fv = drop_subnormal_products(u, v)
    exact = {"rtol": 0, "atol": 0}
    want_u = torch.tensor([[1e-3, 1e-37, 0.0, 2.0], [1e-30, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(fu, want_u, **exact)
    want_v = torch.tensor([[0.5, 1e-36, 0.0, 0.0], [1e-10, 3.0, 1e-9, 0.0]])
    torch.testing.assert_close(fv, want_v, **exact)
    for row_u, row_v, kept_u, kept_v in zip(u, v, fu, fv, strict=True):
        dropped = torch.outer(row_u, row_v) - torch.outer(kept_u, kept_v)
        assert (dropped.abs() < tiny).all()


def test_layer_by_layer_write_back_keeps_dead_units_free_of_subnormals() -> None:
    """``write_fused`` (the CPU step of Eva-s, and of layers that cannot be stacked) writes
    ``G ← f s G + (f u) vᵀ``. A dead output unit has a zero row of ``G`` and a decayed ``u_i``,
    a dead input a zero column and a decayed ``v_j``; where all their products are subnormal
    the row and the column stay zero, and everything else matches the dense float64 update."""
    tiny = torch.finfo(torch.float32).tiny
    torch.manual_seed(0)
    w, b, u = torch.randn(4, 3), torch.randn(4), torch.randn(4)
    v = torch.tensor([0.2, 3e-39, 0.5, 1e-3])  # the last entry multiplies the bias
    w[2], b[2], u[2] = 0, 0, 1e-38  # dead output: u_2 ‖v‖∞ < tiny
    w[:, 1] = 0  # dead input: ‖u‖∞ v_1 < tiny
    f, scale = 0.5, 3.0
    want = f * scale * torch.cat([w, b[:, None]], 1).double() + f * torch.outer(u, v).double()
    write_fused([w], [b], [u], [v], torch.tensor(f), scale)
    got = torch.cat([w, b[:, None]], 1)
    assert not ((got != 0) & (got.abs() < tiny)).any()
    assert (got[2] == 0).all() and (got[:, 1] == 0).all()
    rows, cols = torch.tensor([0, 1, 3]), torch.tensor([0, 2, 3])
    torch.testing.assert_close(got[rows][:, cols].double(), want[rows][:, cols], rtol=1e-6, atol=0)

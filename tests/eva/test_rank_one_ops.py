"""The tensor operations of the rank-one step (``eva/rank_one_ops.py``); the step they make is
compared with the generic path in ``test_rank_one.py``."""

from __future__ import annotations

import torch

from eva.rank_one_ops import drop_subnormal_products


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

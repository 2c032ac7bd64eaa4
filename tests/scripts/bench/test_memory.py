"""Bytes kept between steps."""

from __future__ import annotations

import torch
from torch import nn

from scripts.bench.contenders import build_contender
from scripts.bench.memory import state_bytes, tensor_bytes


def test_tensor_bytes_counts_each_storage_once() -> None:
    base = torch.zeros(10)
    assert tensor_bytes({"a": base, "b": [base[:5], base.view(2, 5)]}) == 40
    assert tensor_bytes((torch.zeros(3, dtype=torch.float64), "text", 7)) == 24


def test_state_bytes_of_sgd_with_momentum_after_a_step() -> None:
    model = nn.Linear(4, 2)  # 10 parameters, 40 bytes
    c = build_contender("sgd", model)
    c.step(torch.randn(3, 4), torch.randint(0, 2, (3,)), nn.functional.cross_entropy)
    assert state_bytes(c) == {
        "params": 40,
        "grads": 40,
        "optimizer": 40,  # one momentum buffer per parameter
        "preconditioner": 0,
        "total": 120,
    }

"""Contenders are built from conf/optimizer exactly as train.py builds them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import eva
from scripts.bench.communication import CountingReducer, communication
from scripts.bench.contenders import (
    build_contender,
    compose_config,
    is_first_order,
    label_overrides,
    parse_label,
)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def test_labels_name_conf_optimizer_choices() -> None:
    assert parse_label("kfac@10") == ("kfac", 10)
    assert parse_label("foof_rank1") == ("foof_rank1", None)  # any conf/optimizer choice
    assert is_first_order("adamw") and not is_first_order("eva")
    for bad in ("sgd@2", "kfac@0", "kfac@x", "nope"):
        with pytest.raises(ValueError):
            parse_label(bad)


def test_overrides_set_the_interval_where_the_config_keeps_it() -> None:
    assert label_overrides("kfac@3") == ["optimizer=kfac", "optimizer.update_interval=3"]
    assert label_overrides("eva@2") == [
        "optimizer=eva",
        "++optimizer.preconditioner.update_interval=2",
    ]
    assert label_overrides("mfac", mfac_grads=8) == ["optimizer=mfac", "optimizer.num_grads=8"]
    assert label_overrides("eva", mfac_grads=8) == ["optimizer=eva"]


@pytest.mark.parametrize("label", ["sgd", "adamw", "eva", "kfac@3", "eva@2", "mfac", "shampoo"])
def test_contender_matches_train_py_config(label: str) -> None:
    """The optimizer and preconditioner carry conf/optimizer's values (plus the label's)."""
    c = build_contender(label, tiny_model(), mfac_grads=4)
    cfg = compose_config(label_overrides(label, 4)).optimizer
    assert type(c.optimizer).__name__ == cfg.base._target_.rsplit(".", 1)[1]
    assert c.optimizer.param_groups[0]["lr"] == cfg.lr
    assert c.hparams["optimizer"]["name"] == cfg.name
    if cfg.get("preconditioner") is None:
        assert c.preconditioner is None and c.reducer is None
        return
    assert isinstance(c.preconditioner, eva.Preconditioner)
    assert type(c.preconditioner).__name__ == cfg.preconditioner._target_.rsplit(".", 1)[1]
    interval = parse_label(label)[1]
    if interval is not None:
        assert c.preconditioner.update_interval == interval


def test_counting_reducer_records_what_a_step_would_all_reduce() -> None:
    reducer = CountingReducer()
    reducer.average([torch.zeros(3), torch.zeros(2, 2, dtype=torch.float64)])
    assert reducer.world_size == 1
    assert (reducer.calls, reducer.bytes) == (1, 12 + 32)

    c = build_contender("eva", tiny_model())
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    for _ in range(2):
        c.step(x, y, nn.functional.cross_entropy)
    comm = communication(c.preconditioner, c.reducer, grad_bytes=1000)
    # Eva reduces ā (d_in + 1 for the bias) and b̄ (d_out) per layer, float32, every step
    assert comm["bytes_per_refresh"] == 4 * ((6 + 1 + 5) + (5 + 1 + 3))
    assert comm["ratio"] == pytest.approx(comm["per_step"] / 1000)
    assert communication(None, None, 1000)["ratio"] == 0

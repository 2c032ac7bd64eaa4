"""``scripts/repro/tuning.py``: the lr chosen by the lowest validation loss."""

from __future__ import annotations

from scripts.repro.run import Layout, pending
from scripts.repro.targets import target
from scripts.repro.tuning import chosen_lr
from tests.scripts.repro.fabricate import fabricate_lm_run, fabricate_lm_target


def test_lr_is_chosen_by_the_lowest_validation_loss(tmp_path):
    """Not by accuracy (highest at the largest lr here); diverged ranks last; ties: smaller lr;
    nothing until the whole sweep finished."""
    layout = Layout(tmp_path, "cpu")
    tgt = target("lm", "cpu")
    adamw = tgt.tuned[0]
    sweep = adamw.sweep()
    fabricate_lm_run(layout, sweep, sweep.runs()[0], 1.6, (2.0, 1.7))
    assert chosen_lr(adamw, layout) is None
    fabricate_lm_target(layout)
    assert [chosen_lr(t, layout) for t in tgt.tuned] == [0.002, 0.1, 0.1, 0.002, 0.002, 0.1, 0.1]
    assert not pending(tgt, layout)

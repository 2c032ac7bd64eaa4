"""``scripts/repro/kl_grid.py``: the κ sweep reuses Tables 4 and 9's runs for the default κ and
Table 4's SGD, and its overrides mean what the rows say."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.repro.kl_grid import DEFAULT_KL_CLIP, KL_CLIPS, METHODS, NO_CLIP
from scripts.repro.run import Layout
from scripts.repro.sweeps import Sweep
from scripts.repro.targets import target


def run_dirs(sweeps: list[Sweep], layout: Layout) -> set[Path]:
    return {layout.run_dir(s, run) for s in sweeps for run in s.runs()}


@pytest.mark.parametrize("scale", ["cpu", "smoke"])
def test_default_kappa_and_sgd_are_table4_and_table9_runs(scale):
    layout = Layout(Path("results"), scale)
    grid, table4, table9 = (target(n, scale) for n in ("kl_sweep", "table4", "table9"))
    default = grid.sweeps[0]
    assert "optimizer.kl_clip" not in default.fixed and "optimizer.kl_clip" not in default.axes
    (kfac,) = (  # whole-batch K-FAC, tuned: its runs at the grid's lr are the default κ's
        t
        for t in table4.tuned
        if t.fixed["optimizer"] == "kfac" and "optimizer.stat_batch" not in t.fixed
    )
    lr = float(default.fixed["optimizer.lr"])
    theirs = run_dirs([*table9.sweeps, kfac.sweep(), kfac.final(lr)], layout)
    assert run_dirs([default], layout) <= theirs
    (sgd,) = grid.tuned
    assert sgd.sweep() == table4.tuned[0].sweep() and sgd.final(0.2) == table4.tuned[0].final(0.2)


def test_every_method_at_every_kappa_and_seed(compose):
    grid = target("kl_sweep", "cpu")
    swept = grid.sweeps[1]
    assert swept.axes["optimizer.kl_clip"] == KL_CLIPS["cpu"]
    assert len(swept.runs()) == len(METHODS) * len(KL_CLIPS["cpu"]) * 3
    for method in METHODS:
        assert compose([f"optimizer={method}"]).optimizer.preconditioner.kl_clip == DEFAULT_KL_CLIP
        off = compose([f"optimizer={method}", f"optimizer.kl_clip={NO_CLIP}"])
        assert off.optimizer.preconditioner.kl_clip is None

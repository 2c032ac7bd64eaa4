"""``merge_sweeps``: fewer multiruns, exactly the same runs (each with its own overrides, hence
its own directory)."""

from __future__ import annotations

import random

import pytest

from scripts.repro.sweeps import SCALES, Sweep, merge_sweeps, run_dirname
from scripts.repro.targets import TARGETS, target


def runs_of(sweeps: list[Sweep]) -> list[tuple[str, str, str]]:
    """Every run of the sweeps, with repeats, as (experiment, scale, directory name)."""
    return [(s.experiment, s.scale, run_dirname(r)) for s in sweeps for r in s.runs()]


def test_sweeps_that_differ_in_one_value_become_one():
    sgd = Sweep("cifar", {"optimizer.lr": (0.05, 0.1)}, {"optimizer": "sgd", "seed": 0}, "cpu")
    eva = Sweep("cifar", {"optimizer.lr": (0.05, 0.1)}, {"optimizer": "eva", "seed": 0}, "cpu")
    (both,) = merge_sweeps([sgd, eva])
    assert both.axes == {"optimizer": ("sgd", "eva"), "optimizer.lr": (0.05, 0.1)}
    assert both.fixed == {"seed": 0}
    assert sorted(runs_of([both])) == sorted(runs_of([sgd, eva]))
    # the swept key itself: the union of the rates, a shared rate once
    more = Sweep("cifar", {"optimizer.lr": (0.1, 0.2)}, {"optimizer": "sgd", "seed": 0}, "cpu")
    (rates,) = merge_sweeps([sgd, more])
    assert rates.axes == {"optimizer.lr": (0.05, 0.1, 0.2)}
    assert sorted(runs_of([rates])) == sorted(set(runs_of([sgd, more])))


def test_sweeps_that_cannot_be_one_product_stay_apart():
    base = Sweep("cifar", {"seed": (0, 1)}, {"optimizer": "sgd", "optimizer.lr": 0.1}, "cpu")
    two_keys = Sweep("cifar", {"seed": (0, 1)}, {"optimizer": "eva", "optimizer.lr": 0.2}, "cpu")
    other_keys = Sweep("cifar", {"seed": (0, 1)}, {"optimizer": "eva"}, "cpu")
    other_experiment = Sweep("cifar_cosine", base.axes, base.fixed, "cpu")
    other_scale = Sweep("cifar", base.axes, base.fixed, "smoke")
    dataset = Sweep("cifar", base.axes, base.fixed | {"dataset": "cifar10_images"}, "cpu")
    smoke_data = Sweep("cifar", base.axes, base.fixed | {"dataset": "smoke_images"}, "cpu")
    for other in (two_keys, other_keys, other_experiment, other_scale):
        assert merge_sweeps([base, other]) == [base, other]
    assert merge_sweeps([dataset, smoke_data]) == [dataset, smoke_data]  # keep_apart
    assert len(merge_sweeps([dataset, smoke_data], keep_apart=())) == 1


def test_a_sweep_whose_runs_another_has_is_dropped():
    big = Sweep("cifar", {"optimizer": ("sgd", "kfac", "eva"), "seed": (0, 1)}, {}, "cpu")
    part = Sweep("cifar", {"optimizer": ("eva", "sgd")}, {"seed": 0}, "cpu")
    assert merge_sweeps([part, big]) == [big]
    assert merge_sweeps([big, part, big]) == [big]


def test_merges_chain_and_keep_the_first_position():
    """Three sweeps joined in two merges; the result stands where the first one stood."""
    fixed = {"seed": 0}
    a, b, c = (Sweep("lm", {}, fixed | {"optimizer": o}, "cpu") for o in ("adamw", "sgd", "eva"))
    lone = Sweep("lm", {}, {"seed": 1, "optimizer.lr": 0.1}, "cpu")
    merged = merge_sweeps([a, lone, b, c])
    assert merged == [Sweep("lm", {"optimizer": ("adamw", "sgd", "eva")}, fixed, "cpu"), lone]


@pytest.mark.parametrize("scale", SCALES)
def test_every_targets_runs_survive_merging(scale):
    """All the targets at a scale, stage by stage as ``run_targets`` launches them: the merged
    multiruns hold exactly the same runs, fewer sweeps, and none that could merge further."""
    targets = [target(name, scale) for name in TARGETS]
    first = [s for t in targets for s in (*t.sweeps, *(x.sweep() for x in t.tuned))]
    finals = [s for t in targets for x in t.tuned for s in x.finals(0.1)]
    for stage in (first, finals):
        merged = merge_sweeps(stage)
        assert sorted(set(runs_of(merged))) == sorted(set(runs_of(stage)))
        assert len(runs_of(merged)) <= len(runs_of(stage))  # a shared run: at most as often
        assert len(merged) <= len(stage)
        assert merge_sweeps(merged) == merged
    assert len(merge_sweeps(first)) < len(first)


def test_random_sweeps_keep_their_runs():
    """Random sweeps over a few keys and values: the same set of runs, none more often."""
    rng = random.Random(0)
    keys = {"optimizer": ("sgd", "eva", "kfac"), "seed": (0, 1, 2), "optimizer.lr": (0.1, 0.2)}
    for _ in range(200):
        sweeps = []
        for _ in range(rng.randint(1, 6)):
            chosen = rng.sample(sorted(keys), rng.randint(1, 3))
            values = {k: tuple(rng.sample(keys[k], rng.randint(1, 2))) for k in chosen}
            fixed = {k: v[0] for k, v in values.items() if len(v) == 1}
            axes = {k: v for k, v in values.items() if len(v) > 1}
            sweeps.append(Sweep(rng.choice(("cifar", "lm")), axes, fixed, "cpu"))
        merged = merge_sweeps(sweeps)
        assert set(runs_of(merged)) == set(runs_of(sweeps))
        assert len(runs_of(merged)) <= len(runs_of(sweeps))  # shared runs: at most as often
        assert merge_sweeps(merged) == merged

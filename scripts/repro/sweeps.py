"""What a reproduction target is made of: Hydra sweeps, tuned learning rates, benchmark calls.

A :class:`Target` (one paper table or figure, or ``lm``, at one of the ``SCALES``) lists

- :class:`Sweep` objects: one ``python train.py -m experiment=<e> scale=<s> ...`` each, whose runs
  are the cartesian product of its ``axes`` with its ``fixed`` hyper-parameters;
- :class:`Tuned` settings: a learning-rate sweep on the first seed, then the other seeds at the
  best rate;
- :class:`BenchJob` objects: one ``python -m scripts.bench`` call each;
- ``not_run``: the rows or panels that its scale cannot produce, each with the reason.

A run's identity is its set of overrides: its directory is Hydra's ``override_dirname`` (the
sorted ``key=value`` overrides joined by commas, :func:`run_dirname`) under
``<out_root>/<group of experiment and scale>/``, so two targets that ask for the same run share
it (Table 9's Eva is Table 4's Eva).

The targets themselves: :mod:`scripts.repro.grids` (the paper's), :mod:`scripts.repro.lm_grid`
(``lm``), by name in :mod:`scripts.repro.targets`.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

SCALES = ("paper", "cpu", "smoke")
"""The scales every target is defined at (described in :mod:`scripts.repro.grids`)."""
TUNED_EXTEND = {"paper": 1, "cpu": 1, "smoke": 0}
"""Extra rates a tuned sweep may add past an edge its best rate sits on (``Tuned.extend``); none
at the smoke scale, whose runs only check that everything runs (the tests fabricate extensions)."""
Value = str | int | float
CONF = Path(__file__).resolve().parents[2] / "conf"


@functools.cache
def preset_group(experiment: str, scale: str = "paper") -> str:
    """The ``group`` that ``train.py experiment=<experiment> scale=<scale>`` records its runs
    under: the one ``conf/at_scale/<experiment>_<scale>.yaml`` sets, else the experiment's."""
    at_scale = CONF / "at_scale" / f"{experiment}_{scale}.yaml"
    for path in (at_scale, CONF / "experiment" / f"{experiment}.yaml"):
        if path.exists() and (group := OmegaConf.load(path).get("group")):
            return str(group)
    raise ValueError(f"no group for experiment={experiment} scale={scale}")


def fmt(value: Value) -> str:
    """A value as it appears in an override (and so in the run's directory name)."""
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Sweep:
    """One Hydra multirun: an experiment at a ``scale`` (the ``conf/scale`` choice), fixed
    hyper-parameters and the axes swept over."""

    experiment: str
    axes: dict[str, tuple[Value, ...]]
    fixed: dict[str, Value] = field(default_factory=dict)
    scale: str = "paper"

    @property
    def group(self) -> str:
        """The folder its runs are recorded in (:func:`preset_group`)."""
        return preset_group(self.experiment, self.scale)

    def runs(self) -> list[dict[str, str]]:
        """Every run of the sweep as ``{override key: value}`` (fixed keys included)."""
        keys = list(self.axes)
        combos = itertools.product(*(self.axes[k] for k in keys))
        fixed = {k: fmt(v) for k, v in self.fixed.items()}
        return [fixed | {k: fmt(v) for k, v in zip(keys, combo, strict=True)} for combo in combos]

    def overrides(self) -> list[str]:
        """The multirun command line: ``experiment=...`` (and ``scale=...`` but at the paper's),
        fixed keys, ``key=v1,v2`` axes."""
        scale = [] if self.scale == "paper" else [f"scale={self.scale}"]
        fixed = [f"{k}={fmt(v)}" for k, v in self.fixed.items()]
        axes = [f"{k}={','.join(fmt(v) for v in values)}" for k, values in self.axes.items()]
        return [f"experiment={self.experiment}", *scale, *fixed, *axes]


def merge_sweeps(
    sweeps: Sequence[Sweep], keep_apart: Collection[str] = ("dataset",)
) -> list[Sweep]:
    """The same runs in as few multiruns as exactly possible: two sweeps of one experiment and
    scale whose overrides have the same keys and differ in the values of one key only become one
    sweep over both sets of values (the cartesian product of the union is the union of the
    products; a run that both contain is kept once), and a sweep whose runs another has is
    dropped, until no two can merge. A merged sweep takes the place of its first part; each run
    keeps its overrides, hence its directory. Saves one process start (torch, Hydra: seconds)
    per merge. Sweeps that differ in a key of ``keep_apart`` stay apart (a dataset may need
    overrides of its own on the command line)."""
    merged = list(sweeps)
    while True:
        for (i, a), (j, b) in itertools.combinations(enumerate(merged), 2):
            if (union := _union(a, b, keep_apart)) is not None:
                merged[i] = union
                del merged[j]
                break
        else:
            return merged


def _values(sweep: Sweep) -> dict[str, tuple[Value, ...]]:
    return {k: (v,) for k, v in sweep.fixed.items()} | dict(sweep.axes)


def _union(a: Sweep, b: Sweep, keep_apart: Collection[str]) -> Sweep | None:
    """``a`` and ``b`` as one sweep (see :func:`merge_sweeps`), or None where they cannot be."""
    if (a.experiment, a.scale) != (b.experiment, b.scale):
        return None
    va, vb = _values(a), _values(b)
    if va.keys() != vb.keys() or not all(va.values()) or not all(vb.values()):
        return None
    sa = {k: {fmt(v) for v in vs} for k, vs in va.items()}
    sb = {k: {fmt(v) for v in vs} for k, vs in vb.items()}
    if all(sb[k] <= sa[k] for k in sa):  # b's runs are all a's
        return a
    if all(sa[k] <= sb[k] for k in sa):
        return b
    differ = [k for k in va if sa[k] != sb[k]]  # not none: neither holds the other's runs
    if len(differ) > 1 or differ[0] in keep_apart:
        return None
    key = differ[0]
    va[key] = (*va[key], *(v for v in vb[key] if fmt(v) not in sa[key]))
    fixed = {k: vs[0] for k, vs in va.items() if len(vs) == 1}
    axes = {k: vs for k, vs in va.items() if len(vs) > 1}
    return Sweep(a.experiment, axes, fixed, a.scale)


def run_dirname(run: dict[str, str]) -> str:
    """Hydra's ``override_dirname`` of a run (see ``exclude_keys`` in :mod:`scripts.repro.run`)."""
    return ",".join(sorted(f"{k}={v}" for k, v in run.items()))


@dataclass(frozen=True)
class Tuned:
    """Runs at a learning rate chosen by a sweep, as the paper tunes each method on its own.

    First ``seeds[0]`` at every rate of ``lrs`` (:meth:`sweep`); once all of those finished, the
    other seeds at the rate whose run ended with the best final ``metric`` (:meth:`final`; see
    :func:`scripts.repro.tuning.chosen_lr`): the highest for an accuracy, the lowest for a loss
    (:attr:`minimise`). The chosen rate's seed-0 run is one of the final seeds, so the rate is
    picked on one of the runs it is reported with (a small optimistic bias, the same for every
    method).

    A best rate at the edge of the sweep says little: with ``extend`` > 0 the sweep grows by one
    rate past that edge (:meth:`beyond`, the grid's own ratio) and is judged again, up to
    ``extend`` extra rates (:func:`scripts.repro.tuning.swept_rates`).

    ``longer``: epoch budgets beyond the experiment's own that every seed also runs at the chosen
    rate (:meth:`longer_runs`): the rate is tuned at the short budget, as the paper's sweeps may
    be shorter than its final runs, and reported at each.
    """

    experiment: str
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    fixed: dict[str, Value] = field(default_factory=dict)
    metric: str = "test_acc"
    extend: int = 0
    scale: str = "paper"
    longer: tuple[int, ...] = ()

    @property
    def minimise(self) -> bool:
        """Whether a lower final ``metric`` is better (losses and bits per byte)."""
        return self.metric.endswith(("_loss", "_bpb"))

    def sweep(self, rates: tuple[float, ...] | None = None) -> Sweep:
        """The learning-rate sweep (first seed only) over ``rates`` (default: :attr:`lrs`; the
        rates swept so far, extensions included, come from
        :func:`scripts.repro.tuning.current_sweep`)."""
        return Sweep(
            self.experiment,
            {"optimizer.lr": self.lrs if rates is None else rates},
            self.fixed | {"seed": self.seeds[0]},
            self.scale,
        )

    def beyond(self, rates: tuple[float, ...], best: float) -> float | None:
        """The next rate past the edge of ``rates`` that ``best`` sits on (one step of the
        grid's ratio ``lrs[1] / lrs[0]``), or None when ``best`` is inside the sweep or the
        extensions are used up."""
        if len(self.lrs) < 2 or len(rates) - len(self.lrs) >= self.extend:
            return None
        ratio = self.lrs[1] / self.lrs[0]
        if best == max(rates):
            return float(f"{max(rates) * ratio:.6g}")
        if best == min(rates):
            return float(f"{min(rates) / ratio:.6g}")
        return None

    def final(self, lr: float) -> Sweep:
        """The remaining seeds at the chosen rate (its first-seed run is the sweep's)."""
        fixed = self.fixed | {"optimizer.lr": lr}
        return Sweep(self.experiment, {"seed": self.seeds[1:]}, fixed, self.scale)

    def longer_runs(self, lr: float) -> tuple[Sweep, ...]:
        """Every seed at the chosen rate for each budget of :attr:`longer` (``trainer.epochs``
        is one more override, so these runs have directories of their own)."""
        fixed = self.fixed | {"optimizer.lr": lr}
        return tuple(
            Sweep(
                self.experiment,
                {"seed": self.seeds},
                fixed | {"trainer.epochs": epochs},
                self.scale,
            )
            for epochs in self.longer
        )

    def finals(self, lr: float) -> tuple[Sweep, ...]:
        """What runs once the rate is chosen: :meth:`final`, then :meth:`longer_runs`."""
        return (self.final(lr), *self.longer_runs(lr))

    @property
    def label(self) -> str:
        """The tuned setting without its rate: ``optimizer=eva,optimizer.stat_batch=16``."""
        return ",".join(
            f"{k}={fmt(v)}" for k, v in self.fixed.items() if k not in ("model", "dataset")
        )


@dataclass(frozen=True)
class BenchJob:
    """One benchmark call (``script``, default the module ``scripts.bench``, with ``args`` and then
    ``--out <bench folder> --name <name>``); ``name`` is its output stem under ``<out>/bench/``."""

    name: str
    args: tuple[str, ...]
    script: str = "scripts.bench"


@dataclass(frozen=True)
class Target:
    """Everything one table or figure needs at one scale."""

    name: str
    scale: str
    title: str
    what_ran: str
    sweeps: tuple[Sweep, ...] = ()
    bench: tuple[BenchJob, ...] = ()
    tuned: tuple[Tuned, ...] = ()
    not_run: tuple[str, ...] = ()
    settings: dict[str, object] = field(default_factory=dict)
    renders: str | None = None
    """Folder under the results folder for the renders; None: ``<scale>/`` (the paper's)."""

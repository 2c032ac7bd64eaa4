"""Every reproduction target by name: the paper's tables and figures (training runs:
:mod:`scripts.repro.grids`, :mod:`scripts.repro.figure_grids`; benchmark tables:
:mod:`scripts.repro.bench_grid`), then ours: ``lm`` (:mod:`scripts.repro.lm_grid`) and
``kl_sweep`` (:mod:`scripts.repro.kl_grid`)."""

from __future__ import annotations

from scripts.repro.bench_grid import table5, table8, table10
from scripts.repro.figure_grids import fig3, fig4, fig5, fig6, fig7, fig8
from scripts.repro.grids import table4, table6, table7, table9
from scripts.repro.kl_grid import kl_sweep
from scripts.repro.lm_grid import lm
from scripts.repro.sweeps import SCALES, Target

BUILDERS = {
    builder.__name__: builder
    for builder in (table4, table5, table6, table7, table8, table9, table10)
    + (fig3, fig4, fig5, fig6, fig7, fig8, lm, kl_sweep)
}
TARGETS = tuple(BUILDERS)
"""Every target, in the paper's order, then ours (``lm``, ``kl_sweep``)."""


def target(name: str, scale: str) -> Target:
    """The :class:`Target` called ``name`` at ``scale``.

    Raises:
        ValueError: an unknown target or scale (the message lists the valid ones).
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    return BUILDERS[name](scale)

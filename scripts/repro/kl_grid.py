"""The ``kl_sweep`` target (not in the paper): K-FAC and Eva across the KL-clip bound κ (Eq. 16)
on Table 4's runs, beside SGD at its best learning rate.

Where the clip binds (ν < 1), the update is ``sqrt(κ / Σ pᵀg)·p`` whatever the learning rate
(:func:`eva.scaling.kl_clip_factor`), and on the CPU-scale CIFAR-10 runs it binds on most steps
of both methods: there κ, not the lr, sets their step, so Table 4's lr sweep leaves them
untuned. This grid tunes κ instead, at the recipe's lr (:func:`~scripts.repro.grids.untuned_fixed`):
every κ of :data:`KL_CLIPS` and no clip at all (``optimizer.kl_clip=null``), every seed. The
default κ's runs carry no κ override, so they are the runs Tables 4 and 9 already have; SGD is
Table 4's tuned SGD (same runs).
"""

from __future__ import annotations

from scripts.repro.grids import (
    FULL_DATA,
    PAPER_CIFAR,
    decisive,
    seeds,
    table4_tuned,
    untuned_fixed,
)
from scripts.repro.sweeps import Sweep, Target, Value

DEFAULT_KL_CLIP = 0.001
"""κ of ``optimizer=eva`` and ``optimizer=kfac`` (conf/optimizer; the paper's, §5.1)."""
NO_CLIP = "null"
"""The κ override that turns the clip off (``optimizer.kl_clip=null``)."""
KL_CLIPS: dict[str, tuple[Value, ...]] = {
    "paper": (1e-4, 1e-2, 1e-1, NO_CLIP),
    "cpu": (1e-4, 1e-2, 1e-1, NO_CLIP),
    "smoke": (1e-2, NO_CLIP),
}
"""The κ swept besides the default, per scale (the default's runs are Tables 4 and 9's)."""
METHODS = ("kfac", "eva")
"""The KL-clipped methods swept (whole-batch statistics: what ``optimizer=<name>`` means)."""


def kl_sweep(scale: str) -> Target:
    if scale == "paper":
        exp, at = "cifar", "paper"
        fixed: dict[str, Value] = {
            "model": "resnet110",
            "dataset": "cifar10",
            "trainer.epochs": 100,
        }
        sgd = (Sweep(exp, {"optimizer": ("sgd",), "seed": seeds(scale)}, fixed, at),)
        tuned = ()
        what = f"ResNet-110 on CIFAR-10, {PAPER_CIFAR}, 100 epochs; every row at lr 0.4"
    else:
        exp, at = decisive(scale)[:2]
        fixed = untuned_fixed(scale)
        sgd, tuned = (), table4_tuned(scale)[:1]
        data = FULL_DATA if scale == "cpu" else "smoke: synthetic data"
        lr = fixed["optimizer.lr"]
        what = f"{data}; SGD at its best lr (Table 4's runs), the rest at lr {lr}"
    kappas = ", ".join(str(k) for k in KL_CLIPS[scale] if k != NO_CLIP)
    axes = {"optimizer": METHODS, "seed": seeds(scale)}
    return Target(
        "kl_sweep",
        scale,
        "Test accuracy (%) of K-FAC and Eva across the KL-clip bound κ, beside SGD",
        f"{what}; K-FAC and Eva (whole-batch statistics) with κ {DEFAULT_KL_CLIP} (the "
        f"default), {kappas} and without the clip; seeds {seeds(scale)}",
        (
            *sgd,
            Sweep(exp, axes, fixed, at),  # the default κ: Tables 4 and 9's runs
            Sweep(exp, {"optimizer.kl_clip": KL_CLIPS[scale], **axes}, fixed, at),
        ),
        tuned=tuned,
    )

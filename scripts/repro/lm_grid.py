"""The ``lm`` target (not in the paper): optimizers on the byte-level GPT of ``experiment=lm``,
each setting (:func:`lm_settings`) at its own best learning rate (:func:`lm`)."""

from __future__ import annotations

from scripts.repro.sweeps import TUNED_EXTEND, BenchJob, Target, Tuned, Value

LM_LRS = {
    "cpu": {"adamw": (1e-3, 2e-3, 4e-3), "sgd": (0.03, 0.1, 0.3)},
    "smoke": {"adamw": (1e-3, 4e-3), "sgd": (0.03, 0.3)},
}
"""Learning rates the ``lm`` settings are swept over (seed 0), per family: AdamW's around
``experiment=lm``'s 2e-3; SGD's around 0.1 (conf/experiment/lm.yaml: 0.5 diverges)."""
LM_SGD_WEIGHT_DECAY = 5e-4
"""SGD-based ``lm`` settings' weight decay (the sgd preset's): ``experiment=lm`` sets AdamW's
decoupled 0.1, which every optimizer would otherwise inherit as a coupled L2 term."""
LM_SMALL_DAMPING = 1e-9
"""Eva's damping at which its rank-one term acts on the GPT: along AdamW's trajectory
‖ā‖²‖b̄‖² is 1e-9 to 1e-6 per layer (median ~4e-8 after 40 steps), so that
‖ā‖²‖b̄‖² / (γ + ‖ā‖²‖b̄‖²) is ~0.95 (median over layers) instead of ~0 at γ = 0.03."""


def lm_settings() -> tuple[tuple[str, dict[str, Value]], ...]:
    """The ``lm`` comparison: (lr family, fixed overrides) per setting."""
    sgd_wd: dict[str, Value] = {"optimizer.weight_decay": LM_SGD_WEIGHT_DECAY}
    return (
        ("adamw", {"optimizer": "adamw"}),
        ("sgd", {"optimizer": "sgd"} | sgd_wd),
        ("sgd", {"optimizer": "eva"} | sgd_wd),
        ("adamw", {"optimizer": "eva_adamw"}),
        ("adamw", {"optimizer": "eva_adamw", "optimizer.damping": LM_SMALL_DAMPING}),
        ("sgd", {"optimizer": "kfac"} | sgd_wd),
        ("sgd", {"optimizer": "shampoo"} | sgd_wd),
    )


def lm(scale: str) -> Target:
    """Optimizers on the byte-level GPT (``experiment=lm``; not a paper experiment): each setting
    at its best lr by final validation loss, 2 seeds; renders into ``<results>/lm/``."""
    lrs = LM_LRS["smoke" if scale == "smoke" else "cpu"]
    seeds = (0, 1)
    tuned = tuple(
        Tuned(
            "lm",
            lrs[family],
            seeds,
            fixed,
            metric="test_loss",
            extend=TUNED_EXTEND[scale],
            scale=scale,
        )
        for family, fixed in lm_settings()
    )
    labels = tuple(t.label for t in tuned)
    steps = ("--steps", "3", "--warmup", "1") if scale == "smoke" else ("--steps", "30")
    experiment = "lm" if scale == "paper" else f"lm,scale={scale}"
    settings = (a for label in labels for a in ("--setting", label))
    bench = BenchJob(f"steptime-{scale}-lm", ("--experiment", experiment, *steps, *settings))
    what = {
        "paper": "the paper has no language-model experiment: SCALE=paper runs the cpu grid "
        "unchanged (records under runs/paper/, renders under lm/paper/)",
        "cpu": "`experiment=lm` as it is",
        "smoke": "smoke: `experiment=lm scale=smoke` (a 1-layer GPT of width 16, 2 epochs of 3 "
        "steps)",
    }[scale]
    recipe = (
        ""
        if scale == "smoke"
        else ": a 4-layer GPT (width 128, context 128), 5 epochs of 100 steps of 32 windows of "
        "128 bytes, cosine schedule after 20 warmup steps"
    )
    return Target(
        "lm",
        scale,
        "Byte-level GPT on the Python standard library: validation loss of AdamW, SGD, Eva, "
        "K-FAC and Shampoo, each at its best learning rate",
        f"{what}{recipe}; lr swept per setting with seed 0 (AdamW-based {lrs['adamw']}, "
        f"SGD-based {lrs['sgd']}; one more rate past the edge when the best sits on it), then "
        f"seeds {seeds} at the lr with the lowest final validation loss; SGD-based settings "
        f"with weight decay {LM_SGD_WEIGHT_DECAY} (AdamW's: 0.1, decoupled); Eva and K-FAC at "
        "damping 0.03 unless stated; step times measured alone, all "
        f"settings in turn on the same batches (`{bench.name}` record)",
        tuned=tuned,
        bench=(bench,),
        not_run=(
            "Eva on SGD at a small damping: in a 10-step probe (damping 1e-9, lr 0.1 and 0.03) "
            "it diverged; KL clipping bounds α²ν²pᵀg by κ, and with P ≈ G/γ the step's squared "
            "norm is then κ/γ, huge for a small γ (under AdamW the scale cancels)",
        ),
        settings={"steptime": bench.name},
        renders=None if scale == "smoke" else ("lm" if scale == "cpu" else "lm/paper"),
    )

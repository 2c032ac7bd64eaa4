"""The paper's tables and figures (``table4`` ... ``fig8``): what each runs at each scale.

The training runs: Hydra sweeps (:class:`~scripts.repro.sweeps.Sweep`); Table 4 and Fig. 5 tune
each method's learning rate at the reduced scales (:class:`~scripts.repro.sweeps.Tuned`). This
module holds the tables (4, 6, 7, 9) and what every grid shares (the scales' models, data,
seeds and budgets); the figures are :mod:`scripts.repro.figure_grids`, Tables 5, 8 and 10
(benchmark calls) :mod:`scripts.repro.bench_grid`.

Scales (``SCALES``):

- ``paper`` — the paper's settings (models, datasets, epochs, seeds, batch sizes); meant for a GPU
  cluster (``--launcher slurm`` sends every sweep to Slurm through hydra-submitit-launcher).
- ``cpu`` — real data that can be had here, sized for a 2-core CPU: Tables 4/9 and Figs. 3/5/8
  train ResNet-20 on the full CIFAR-10 JPEG copy for 10 epochs (``experiment=cifar_cosine
  scale=cpu``, ~15-20 min per run); Table 7 and Figs. 6/7 on a fixed 5,000-image subset for a
  few epochs (``experiment=cifar scale=cpu_subset``); the paper's autoencoder on MNIST and
  Fashion-MNIST (``experiment=autoencoder scale=cpu``); benchmark tables from
  the CPU benchmark. Datasets that are not here (CIFAR-100, ImageNet, FACES, CURVES) are
  reported as not run.
- ``smoke`` — seconds, synthetic data (``scale=smoke``): proves every target runs and renders
  end to end.

A run is ``train.py experiment=<e> scale=<s>``: the ``scale`` config group (``conf/scale``, with
the values it changes per experiment in ``conf/at_scale/<e>_<s>.yaml``) sizes the experiment.
"""

from __future__ import annotations

from scripts.repro.sweeps import TUNED_EXTEND, Sweep, Target, Tuned, Value

# Learning rates the paper tuned per optimizer but does not list: ours (CIFAR batch 512 / AE).
CIFAR_LR = {"adagrad": 0.05, "adamw": 0.002}
AUTOENCODER_LR = {
    "sgd": (0.005, 0.002),
    "adagrad": (0.01,),
    "shampoo": (0.001,),
    "kfac": (0.005,),
    "eva": (0.005,),
}
"""Fig. 4 learning rates per optimizer (the paper tuned each in [0.001, 0.5] per dataset and
does not list them); the figure shows each optimizer at its best rate among these."""

CPU_DATA = (
    "ResNet-20 on a fixed random 5,000-image subset of the CIFAR-10 training set, evaluated on "
    "2,000 test images; CIFAR-10 is the JPEG-lossy copy (quality 75), batch 128, lr 0.1 "
    "(the paper's 0.4 at batch 512, scaled), otherwise the paper's CIFAR recipe"
)
PAPER_CIFAR = "the paper's CIFAR recipe (batch 512, lr 0.4, weight decay 5e-4, multi-step decay)"
CPU_ONLY_MODEL = "VGG-19, ResNet-110 and WRN-28-10 are too slow for a 2-core CPU: ResNet-20 instead"
NO_C100 = "CIFAR-100 is not available here"
FULL_DATA = (
    "ResNet-20 on the full CIFAR-10 JPEG copy (all 50,000 training and 10,000 test images; "
    "lossy quality-75 JPEG, so accuracies can differ slightly from the originals'), batch 128, "
    "10 epochs (half an epoch of linear warmup, then cosine decay), lr 0.1 unless tuned (the "
    "paper's 0.4 at batch 512, scaled), weight decay 5e-4, momentum 0.9"
)
TUNED_LRS = {"cpu": (0.05, 0.1, 0.2), "smoke": (0.05, 0.1)}
"""Learning rates each Table 4 method is swept over at the reduced scales (seed 0)."""
TABLE4_LONGER = {"cpu": (20,), "smoke": ()}
"""Longer epoch budgets Table 4 also runs every seed for, at the rate tuned at the scale's own
budget (``Tuned.longer``): at the CPU scale 20 epochs besides the 10 of the sweep."""
AUTHORS_STAT_BATCH = 16
"""The authors' runs took Kronecker vectors / factors from the first 16 samples of each batch."""


Row = tuple[str, str, str, str]
"""(experiment, config scale, model, dataset) of a CIFAR-shaped run."""


def decisive(scale: str) -> Row:
    """The runs of Tables 4/9 and Figs. 3/5/8 at a reduced scale."""
    if scale == "cpu":
        return ("cifar_cosine", "cpu", "resnet20", "cifar10_images")
    return ("cifar_cosine", "smoke", "resnet20", "smoke_images")


def table4_settings(scale: str) -> tuple[dict[str, Value], ...]:
    """Table 4's rows at a reduced scale: SGD, then K-FAC and Eva with whole-batch statistics
    and with the authors' 16-sample statistics (smoke: 8 of its 16)."""
    stat = AUTHORS_STAT_BATCH if scale != "smoke" else 8
    return (
        {"optimizer": "sgd"},
        {"optimizer": "kfac"},
        {"optimizer": "kfac", "optimizer.stat_batch": stat},
        {"optimizer": "eva"},
        {"optimizer": "eva", "optimizer.stat_batch": stat},
    )


def table4_tuned(scale: str, longer: tuple[int, ...] = ()) -> tuple[Tuned, ...]:
    """Table 4's settings (:func:`table4_settings`), each tuned over ``TUNED_LRS`` (and run for
    the ``longer`` budgets too): also Fig. 5's runs at the reduced scales."""
    exp, at, model, data = decisive(scale)
    return tuple(
        Tuned(
            exp,
            TUNED_LRS[scale],
            seeds(scale),
            {"model": model, "dataset": data} | setting,
            extend=TUNED_EXTEND[scale],
            scale=at,
            longer=longer,
        )
        for setting in table4_settings(scale)
    )


def untuned_fixed(scale: str) -> dict[str, Value]:
    """Model, data and the preset's lr of the untuned reduced-scale runs (the lr is spelled out
    so that a run shared with a tuned sweep has the same directory)."""
    _, _, model, data = decisive(scale)
    return {"model": model, "dataset": data, "optimizer.lr": 0.1}


def scaled(scale: str, paper: object, cpu: object, smoke: object) -> object:
    """The value of a setting at ``scale``, from its three values."""
    return {"paper": paper, "cpu": cpu, "smoke": smoke}[scale]


def cifar_rows(scale: str, paper_rows: list[tuple[str, str, str]]) -> list[Row]:
    """The paper's (experiment, model, dataset) rows, or the scale's stand-in."""
    if scale == "paper":
        return [(exp, "paper", model, data) for exp, model, data in paper_rows]
    if scale == "cpu":
        return [("cifar", "cpu_subset", "resnet20", "cifar10_images")]
    return [("cifar", "smoke", "resnet20", "smoke_images")]


def seeds(scale: str) -> tuple[int, ...]:
    """The seeds of a run repeated over seeds: 3, or 2 at the smoke scale."""
    return (0, 1) if scale == "smoke" else (0, 1, 2)


def budget(scale: str) -> int:
    """The epochs standing in for the paper's 100 (Tables 7/9, Figs. 3/7/8)."""
    return int(scaled(scale, 100, 4, 1))  # type: ignore[call-overload]


def long_budget(scale: str) -> int:
    """The epochs standing in for the paper's 200 (Figs. 5/6: the longest Table 4 budget)."""
    return int(scaled(scale, 200, 8, 2))  # type: ignore[call-overload]


def optimizer_lr(scale: str, optimizer: str) -> dict[str, Value]:
    """Per-optimizer lr for the optimizers whose lr is not the SGD recipe's."""
    if optimizer not in CIFAR_LR:
        return {}  # Shampoo (grafted) and M-FAC (KL-clipped) take the SGD recipe's lr
    lr = CIFAR_LR[optimizer]
    return {"optimizer.lr": lr if scale == "paper" else lr / 4}  # batch 128 instead of 512


def table4(scale: str) -> Target:
    if scale != "paper":
        what = f"{FULL_DATA}; each row at its own lr" if scale == "cpu" else "smoke: synthetic"
        return Target(
            "table4",
            scale,
            "Test accuracy (%) of SGD, K-FAC and Eva trained from scratch, each at its best "
            "learning rate; K-FAC and Eva with whole-batch and with 16-sample statistics",
            f"{what}; lr swept over {TUNED_LRS[scale]} with seed 0 (one more rate past the "
            f"edge when the best sits on it), then seeds {seeds(scale)} at the best one"
            + "".join(f"; every seed also for {e} epochs at that lr" for e in TABLE4_LONGER[scale]),
            tuned=table4_tuned(scale, TABLE4_LONGER[scale]),
            not_run=(CPU_ONLY_MODEL, NO_C100) if scale == "cpu" else (),
            settings={"lrs": TUNED_LRS[scale]},
        )
    rows = [
        ("cifar", "vgg19", "cifar10"),
        ("cifar", "vgg19", "cifar100"),
        ("cifar", "resnet110", "cifar10"),
        ("cifar", "resnet110", "cifar100"),
        ("cifar_tricks", "wrn28_10", "cifar10"),
        ("cifar_tricks", "wrn28_10", "cifar100"),
    ]
    epochs = (50, 100, 200)
    sweeps = tuple(
        Sweep(
            exp,
            {"optimizer": ("sgd", "kfac", "eva"), "trainer.epochs": epochs, "seed": seeds(scale)},
            {"model": model, "dataset": data},
        )
        for exp, model, data in rows
    )
    return Target(
        "table4",
        scale,
        "Validation accuracy (%) of SGD, K-FAC and Eva trained from scratch, per epoch budget",
        f"{PAPER_CIFAR}; 3 seeds",
        sweeps,
        settings={"epochs": epochs},
    )


def table7(scale: str) -> Target:
    rows = cifar_rows(
        scale,
        [
            ("cifar", "vgg19", "cifar10"),
            ("cifar", "resnet110", "cifar10"),
            ("cifar_tricks", "wrn28_10", "cifar10"),
        ],
    )
    sweeps = []
    for exp, at, model, data in rows:
        for opt in ("adagrad", "adamw", "shampoo", "mfac", "eva"):
            # Table 7: M-FAC on WRN-28-10 without CutMix/AutoAugment (they made it diverge).
            preset = "cifar" if (opt == "mfac" and exp == "cifar_tricks") else exp
            fixed = {
                "model": model,
                "dataset": data,
                "optimizer": opt,
                "trainer.epochs": budget(scale),
            }
            fixed |= optimizer_lr(scale, opt)
            sweeps.append(Sweep(preset, {"seed": seeds(scale)}, fixed, at))
    return Target(
        "table7",
        scale,
        "Validation accuracy (%) of Eva and four more optimizers, the paper's 100-epoch budget",
        scaled(
            scale,
            f"{PAPER_CIFAR}, 100 epochs, 3 seeds; learning rates per optimizer are ours "
            f"(the paper tuned them but does not list them): {CIFAR_LR}",
            f"{CPU_DATA}; 4 epochs stand for 100; 3 seeds; Adagrad lr 0.0125, AdamW lr 5e-4 "
            "(ours, untuned), Shampoo (grafted) and M-FAC (KL-clipped) at the SGD lr",
            "smoke: synthetic data",
        ),  # type: ignore[arg-type]
        tuple(sweeps),
        not_run=() if scale == "paper" else (CPU_ONLY_MODEL,),
    )


def table9(scale: str) -> Target:
    ablations = ("eva", "eva_no_momentum", "eva_no_klclip", "eva_no_kv")
    unclipped = (
        "'w/o KVs' is not KL-clipped, as in the authors' run of it (their optimizer accepted "
        "kl_clip and never read it)"
    )
    if scale != "paper":
        exp, at = decisive(scale)[:2]
        return Target(
            "table9",
            scale,
            "Ablation: Eva without momentum, without KL clipping, without Kronecker vectors",
            f"{FULL_DATA if scale == 'cpu' else 'smoke: synthetic data'}; every row at lr 0.1; "
            f"seeds {seeds(scale)}; {unclipped}",
            (Sweep(exp, {"optimizer": ablations, "seed": seeds(scale)}, untuned_fixed(scale), at),),
            not_run=(CPU_ONLY_MODEL, NO_C100) if scale == "cpu" else (),
        )
    rows = [
        ("cifar", "resnet110", "cifar10"),
        ("cifar_tricks", "wrn28_10", "cifar10"),
        ("cifar", "vgg19", "cifar100"),
    ]
    sweeps = tuple(
        Sweep(
            exp,
            {"optimizer": ablations, "seed": seeds(scale)},
            {"model": model, "dataset": data, "trainer.epochs": budget(scale)},
        )
        for exp, model, data in rows
    )
    return Target(
        "table9",
        scale,
        "Ablation: Eva without momentum, without KL clipping, without Kronecker vectors",
        f"{PAPER_CIFAR}, 100 epochs, 3 seeds; {unclipped}",
        sweeps,
    )


def table6(scale: str) -> Target:
    if scale == "cpu":
        return Target(
            "table6",
            scale,
            "Fine-tuning pretrained EfficientNet-b0 and ViT-B/16 for 20 epochs",
            "not run at this scale",
            not_run=(
                "fine-tuning needs pretrained EfficientNet-b0/ViT-B/16 weights (a local file: "
                "model.kwargs.pretrained=...), which cannot be had here, and ImageNet-size "
                "models are beyond a 2-core CPU",
            ),
        )
    if scale == "smoke":
        rows = cifar_rows(scale, [])
    else:
        rows = [
            ("finetune", "paper", m, d)
            for m in ("efficientnet_b0", "vit_b16")
            for d in ("cifar10", "cifar100")
        ]
    sweeps = tuple(
        Sweep(
            exp,
            {"optimizer": ("sgd", "kfac", "eva"), "seed": seeds(scale)},
            {"model": model, "dataset": data, "trainer.epochs": scaled(scale, 20, 20, 1)},
            at,
        )
        for exp, at, model, data in rows
    )
    return Target(
        "table6",
        scale,
        "Fine-tuning pretrained EfficientNet-b0 and ViT-B/16 for 20 epochs",
        scaled(
            scale,
            "finetune preset, 20 epochs, 3 seeds; pretrained weights from the file named by "
            "+model.kwargs.pretrained (pass it with --override)",
            "",
            "smoke: synthetic data, random weights",
        ),  # type: ignore[arg-type]
        sweeps,
    )

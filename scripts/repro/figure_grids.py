"""The paper's figures (Figs. 3 to 8): what each trains at each scale (the scales, and what the
grids share: :mod:`scripts.repro.grids`)."""

from __future__ import annotations

from scripts.repro.grids import (
    AUTOENCODER_LR,
    CPU_DATA,
    CPU_ONLY_MODEL,
    FULL_DATA,
    NO_C100,
    PAPER_CIFAR,
    TABLE4_LONGER,
    Row,
    budget,
    cifar_rows,
    decisive,
    long_budget,
    scaled,
    table4_tuned,
    untuned_fixed,
)
from scripts.repro.sweeps import Sweep, Target, Value


def fig3(scale: str) -> Target:
    if scale != "paper":
        exp, at = decisive(scale)[:2]
        methods = {"optimizer": ("foof", "foof_rank1"), "seed": (0, 1)}
        sweep = Sweep(exp, methods, untuned_fixed(scale), at)
        return Target(
            "fig3",
            scale,
            "FOOF vs FOOF rank-1: training loss and validation accuracy per epoch",
            f"{FULL_DATA if scale == 'cpu' else 'smoke: synthetic data'}; seeds 0 and 1 (curves: "
            "their mean); FOOF's runs are Fig. 8's",
            (sweep,),
            not_run=("VGG-19: ResNet-20 instead",) if scale == "cpu" else (),
        )
    sweep = Sweep(
        "cifar",
        {"optimizer": ("foof", "foof_rank1")},
        {"model": "vgg19", "dataset": "cifar10", "trainer.epochs": budget(scale), "seed": 0},
    )
    return Target(
        "fig3",
        scale,
        "FOOF vs FOOF rank-1: training loss and validation accuracy per epoch",
        f"VGG-19 on CIFAR-10, {PAPER_CIFAR}, 100 epochs",
        (sweep,),
    )


def fig4(scale: str) -> Target:
    datasets = scaled(
        scale, ("mnist", "fmnist", "faces", "curves"), ("mnist", "fmnist"), ("smoke_vectors",)
    )
    sweeps = []
    for data in datasets:  # type: ignore[attr-defined]
        fixed: dict[str, Value] = {"dataset": data, "seed": 0}
        if data == "faces":  # 25×25 images: 625-2000-1000-500-30 (Fig. 4's FACES network)
            fixed["model.kwargs.dims"] = "[625,2000,1000,500,30]"
        for opt, lrs in AUTOENCODER_LR.items():
            sweeps.append(
                Sweep("autoencoder", {"optimizer.lr": lrs}, fixed | {"optimizer": opt}, scale)
            )
    return Target(
        "fig4",
        scale,
        "8-layer autoencoder: training and test loss per epoch",
        scaled(
            scale,
            "the paper's autoencoder recipe (batch 1000, 100 epochs, linear decay); learning "
            f"rates per optimizer are ours (each shown at its best one): {AUTOENCODER_LR}",
            "the paper's autoencoder and batch 1000 on the full MNIST and Fashion-MNIST splits, "
            "10 epochs with linear decay, seed 0; learning rates (ours; each optimizer is shown "
            f"at its best one): {AUTOENCODER_LR}",
            "smoke: synthetic data",
        ),  # type: ignore[arg-type]
        tuple(sweeps),
        not_run=() if scale == "paper" else ("FACES and CURVES are not available here",),
    )


def _time_rows(scale: str) -> list[Row]:
    return cifar_rows(
        scale,
        [
            ("cifar", "vgg19", "cifar10"),
            ("cifar", "resnet110", "cifar10"),
            ("cifar_tricks", "wrn28_10", "cifar10"),
        ],
    )


def fig5(scale: str) -> Target:
    title = "Test accuracy over epochs and over training time; time to a target accuracy"
    if scale != "paper":
        exp, at = decisive(scale)[:2]
        shampoo = Sweep(exp, {"seed": (0, 1)}, untuned_fixed(scale) | {"optimizer": "shampoo"}, at)
        return Target(
            "fig5",
            scale,
            title,
            f"{FULL_DATA if scale == 'cpu' else 'smoke: synthetic data'}; Table 4's runs (each "
            "method at its tuned lr, 3 seeds) plus Shampoo at lr 0.1 (Fig. 8's runs, 2 seeds)"
            + "".join(
                f"; below, Table 4's {e}-epoch runs (every seed at the same lrs)"
                for e in TABLE4_LONGER[scale]
            )
            + "; seconds are steps × the method's mean step time measured alone on the CPU "
            "(`steptime-cpu-resnet20` record), since the runs themselves may share a machine",
            (shampoo,),
            tuned=table4_tuned(scale, TABLE4_LONGER[scale]),
            not_run=("ImageNet (panel d) is not available here", CPU_ONLY_MODEL)
            if scale == "cpu"
            else (),
            settings={"steptime": "steptime-cpu-resnet20"},
        )
    sweeps = tuple(
        Sweep(
            exp,
            {"optimizer": ("sgd", "kfac", "shampoo", "eva")},
            {"model": model, "dataset": data, "trainer.epochs": long_budget(scale), "seed": 0},
            at,
        )
        for exp, at, model, data in _time_rows(scale)
    )
    return Target(
        "fig5",
        scale,
        "Wall-clock time to target accuracy (target: SGD's final accuracy)",
        f"{PAPER_CIFAR}, 200 epochs, seed 0, one GPU per run",
        sweeps,
        not_run=(
            "ImageNet (panel d): run `train.py experiment=imagenet` on 32 GPUs (per-optimizer "
            "batch sizes and intervals, see conf/experiment/imagenet.yaml)",
        ),
    )


def fig6(scale: str) -> Target:
    sweeps: list[Sweep] = []
    for exp, at, model, data in _time_rows(scale)[:2]:
        fixed: dict[str, Value] = {
            "model": model,
            "dataset": data,
            "trainer.epochs": long_budget(scale),
            "seed": 0,
        }
        # K-FAC's preset interval (10) and Eva are Table 4's / Fig. 5's runs.
        sweeps.append(Sweep(exp, {"optimizer": ("kfac", "eva")}, fixed, at))
        intervals = {"optimizer.update_interval": (1, 50)}
        sweeps.append(Sweep(exp, intervals, fixed | {"optimizer": "kfac"}, at))
    return Target(
        "fig6",
        scale,
        "K-FAC with update intervals 1, 10 and 50 vs Eva: accuracy over wall-clock time",
        scaled(
            scale,
            f"VGG-19 and ResNet-110 on CIFAR-10, {PAPER_CIFAR}, 200 epochs, seed 0",
            f"{CPU_DATA}; 8 epochs; seed 0; runs one after another on the same 2-core CPU",
            "smoke: synthetic data",
        ),  # type: ignore[arg-type]
        tuple(sweeps),
        not_run=() if scale == "paper" else (CPU_ONLY_MODEL,),
    )


def fig7(scale: str) -> Target:
    exp, at, model, data = cifar_rows(scale, [("cifar", "resnet110", "cifar10")])[0]
    base: dict[str, Value] = {
        "model": model,
        "dataset": data,
        "trainer.epochs": budget(scale),
        "seed": 0,
    }
    lr0 = float(scaled(scale, 0.4, 0.1, 0.1))  # type: ignore[arg-type]
    batch0 = int(scaled(scale, 512, 128, 16))  # type: ignore[call-overload]
    three = ("sgd", "kfac", "eva")
    # Each axis leaves out the preset's value: that point is the base sweep's run.
    lrs = (lr0 / 2, lr0 * 2) if scale != "paper" else (0.1, 0.2, 0.8, 1.6)
    batches = (batch0 * 2, batch0 * 4) if scale != "paper" else (128, 256, 1024, 2048)
    sweeps = [
        Sweep(exp, {"optimizer": three, "optimizer.lr": lrs}, base, at),
        *(
            Sweep(
                exp,
                {"optimizer": three},
                base | {"trainer.batch_size": b, "optimizer.lr": lr0 * b / batch0},
                at,
            )
            for b in batches
        ),
        Sweep(
            exp,
            {
                "optimizer": ("kfac", "eva"),
                "optimizer.damping": (0.003, 0.3)
                if scale != "paper"
                else (0.001, 0.003, 0.01, 0.1, 0.3),
            },
            base,
            at,
        ),
        Sweep(
            exp,
            {
                "optimizer": ("kfac", "eva"),
                "optimizer.running_avg": (0.5, 0.99) if scale != "paper" else (0.5, 0.9, 0.99),
            },
            base,
            at,
        ),
        Sweep(exp, {"optimizer": three}, base, at),  # the default point of every panel
    ]
    return Target(
        "fig7",
        scale,
        "Hyper-parameter study: learning rate, batch size, damping, running average",
        scaled(
            scale,
            f"ResNet-110 on CIFAR-10, {PAPER_CIFAR}, 100 epochs, seed 0; batch sizes with the "
            "learning rate scaled linearly (0.4 at 512); grid values are ours",
            f"{CPU_DATA}; 4 epochs; seed 0; batch sizes 256/512 with the lr scaled linearly",
            "smoke: synthetic data",
        ),  # type: ignore[arg-type]
        tuple(sweeps),
        not_run=() if scale == "paper" else ("ResNet-110: ResNet-20 instead",),
        settings={"lr": lr0, "batch": batch0},
    )


def fig8(scale: str) -> Target:
    methods = ("foof", "eva_f", "shampoo", "eva_s")
    if scale != "paper":
        exp, at = decisive(scale)[:2]
        return Target(
            "fig8",
            scale,
            "Eva-f vs FOOF and Eva-s vs Shampoo: training loss and validation accuracy per epoch",
            f"{FULL_DATA if scale == 'cpu' else 'smoke: synthetic data'}; lr 0.1 for all four; "
            "seeds 0 and 1 (curves: their mean)",
            (Sweep(exp, {"optimizer": methods, "seed": (0, 1)}, untuned_fixed(scale), at),),
            not_run=("ResNet-110: ResNet-20 instead", NO_C100) if scale == "cpu" else (),
        )
    rows = [("cifar_cosine", "resnet110", "cifar10"), ("cifar_cosine", "vgg19", "cifar100")]
    sweeps = tuple(
        Sweep(
            exp,
            {"optimizer": methods},
            {"model": model, "dataset": data, "trainer.epochs": budget(scale), "seed": 0},
        )
        for exp, model, data in rows
    )
    return Target(
        "fig8",
        scale,
        "Eva-f vs FOOF and Eva-s vs Shampoo: training loss and validation accuracy per epoch",
        "ResNet-110 on CIFAR-10 and VGG-19 on CIFAR-100, cosine schedule, 100 epochs, seed 0",
        sweeps,
    )

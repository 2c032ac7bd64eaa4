"""The paper's benchmark tables (Tables 5, 8 and 10): the ``python -m scripts.bench`` calls each
makes at each scale (:class:`~scripts.repro.sweeps.BenchJob`) and what the render says ran."""

from __future__ import annotations

from scripts.repro.grids import scaled
from scripts.repro.sweeps import BenchJob, Target


def _bench_common(scale: str) -> tuple[str, ...]:
    if scale == "smoke":
        return ("--quick", "--profile-models", "")
    if scale == "cpu":
        return ("--profile-models", "", "--steps", "6", "--warmup", "1", "--peak-memory", "none")
    return ("--profile-models", "")


def table5(scale: str, name: str = "table5") -> Target:
    optimizers = "sgd,kfac@1,kfac@10,shampoo@1,shampoo@10,eva,eva_f,eva_s"
    imagenet_optimizers = "sgd,kfac@1,kfac@50,shampoo@1,shampoo@50,eva,eva_f,eva_s"
    if scale == "paper":
        jobs = (
            BenchJob(
                "steptime-table5-cifar",
                ("--models", "resnet110,vgg19,wrn28_10", "--optimizers", optimizers),
            ),
            BenchJob(
                "steptime-table5-imagenet",
                ("--models", "resnet50,inception_v4,vit_b16", "--optimizers", imagenet_optimizers),
            ),
        )
        not_run: tuple[str, ...] = ()
    elif scale == "cpu":
        jobs = (
            BenchJob(
                "steptime-cpu",
                ("--models", "resnet110,vgg19", "--optimizers", optimizers, "--batch", "128"),
            ),
        )
        not_run = (
            "WRN-28-10, ResNet-50, Inception-v4 and ViT-B/16 were not timed on the 2-core CPU "
            "(one step takes tens of seconds)",
        )
    else:
        jobs = (BenchJob("steptime-smoke", ("--optimizers", optimizers, *_bench_common(scale))),)
        not_run = ()
    what = {
        "paper": "the benchmark on the GPU it runs on, CIFAR batch 128, ImageNet batch 32",
        "cpu": "the benchmark (`make bench`) on this 2-core CPU, CIFAR-shaped input, batch 128",
        "smoke": "smoke: the benchmark's --quick setting",
    }[scale]
    title = (
        "Step time and peak memory relative to SGD (Shampoo, K-FAC, Eva)"
        if name == "table5"
        else "Step time and peak memory of Eva-f and Eva-s relative to SGD"
    )
    return Target(name, scale, title, what, bench=jobs, not_run=not_run)


def table10(scale: str) -> Target:
    return table5(scale, "table10")


def table8(scale: str) -> Target:
    small, large = scaled(scale, ("64", "96"), ("4", "6"), ("2", "3"))  # type: ignore[misc]
    common = _bench_common(scale)
    model = "resnet20" if scale == "smoke" else "resnet50"
    batch_flag = "--batch" if scale == "smoke" else "--imagenet-batch"
    jobs = (
        BenchJob(
            f"throughput-{scale}-large",
            ("--models", model, "--optimizers", "sgd,eva", batch_flag, large, *common),
        ),
        BenchJob(
            f"throughput-{scale}-small",
            (
                "--models",
                model,
                "--optimizers",
                "sgd,kfac@50,shampoo@50",
                batch_flag,
                small,
                *common,
            ),
        ),
    )
    what = {
        "paper": "the benchmark on one GPU (the paper measured 32 GPUs), per-GPU batch 96 "
        "(SGD, Eva) and 64 (K-FAC@50, Shampoo@50)",
        "cpu": "the benchmark on this 2-core CPU with ImageNet-shaped random input (step time "
        "does not depend on the pixels; no data loading), per-process batch 6 (SGD, Eva) and "
        "4 (K-FAC@50, Shampoo@50), the paper's 96:64 ratio",
        "smoke": "smoke: ResNet-20 on 16×16 random input",
    }[scale]
    return Target(
        "table8",
        scale,
        "ResNet-50 training throughput (samples/s) at the paper's batch-size ratio",
        what,
        bench=jobs,
        not_run=() if scale != "cpu" else ("32-GPU throughput: one CPU process here",),
        settings={"batch": {"sgd": large, "eva": large, "kfac@50": small, "shampoo@50": small}},
    )

"""Main job: the paper's Fig. 4 experiment (deep autoencoder on MNIST) at laptop scale.

Trains the 784-1000-500-250-30-250-500-1000-784 autoencoder with SGD (momentum 0.9), Eva and
K-FAC side by side: same initial weights, same data order, same linearly decaying learning-rate
schedule, batch size 1000 as in the paper. Each optimizer is ``conf/optimizer/<name>.yaml`` under
the Fig. 4 preset (``experiment=autoencoder``: no weight decay) with the demo's learning rate
(:data:`OVERRIDES`), built by :func:`harness.optimizers.build_optimizer` as train.py builds it.
The loss is binary cross-entropy between the reconstruction logits and the input pixels, summed
over the 784 pixels and averaged over the batch (the classic per-image reconstruction loss of the
autoencoder literature, in nats).

Prints one line per epoch and a final table, and writes ``demo.json`` (all numbers, the command,
versions and machine) and ``demo.png`` (training-loss curves) into ``--out``.

Usage (from the repository root, after ``pip install -e .``; or ``make demo``)::

    python -m scripts.demo                      # the defaults: about 2-4 minutes on a 2-core CPU
    python -m scripts.demo --epochs 1 --train-size 500 --optimizers sgd --out /tmp/demo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
from omegaconf import OmegaConf

from data.mnist import load_mnist
from harness.optimizers import build_optimizer, compose_optimizer
from harness.records import cpu_model
from models.autoencoder import Autoencoder, reconstruction_loss

REPO_ROOT = Path(__file__).resolve().parents[1]

OPTIMIZERS = ("sgd", "eva", "kfac")
"""Names accepted by ``--optimizers`` (files of ``conf/optimizer``), in the order they run."""

OVERRIDES = ("experiment=autoencoder", "optimizer.lr=0.005")
"""What the demo sets on top of ``conf/optimizer/<name>.yaml``, the same for every optimizer.

The Fig. 4 preset's optimizer settings (no weight decay), and an initial learning rate (of the
SGD that takes the step) of 0.005, decaying linearly to 0. That is SGD's best of 0.003, 0.005,
0.007, 0.01, 0.02 on the default setting (0.02 diverges). Eva and K-FAC use the same value: with
KL clipping active their steps barely depend on it here (Eva's final loss moved by under 1%
between 0.01, 0.03 and 0.1 over 10 epochs, and between 0.005 and 0.01 over 20 epochs). Everything
else (momentum 0.9; damping 0.03, running average 0.95, KL clip 0.001, K-FAC's update interval
10) is the config's, i.e. the paper's defaults.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The parsed options; ``optimizers`` is a list of names from :data:`OPTIMIZERS`.
    """
    parser = argparse.ArgumentParser(
        description="Deep autoencoder on MNIST: SGD vs Eva vs K-FAC (the paper's Fig. 4, small).",
    )
    parser.add_argument("--epochs", type=_positive_int, default=20, help="epochs (default: 20)")
    parser.add_argument(
        "--train-size",
        type=_positive_int,
        default=20_000,
        help="training images, the first N of MNIST's 60,000 (default: 20000)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=1000, help="batch size (default: 1000)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "results" / "demo",
        help="output folder for demo.json and demo.png (default: results/demo)",
    )
    parser.add_argument(
        "--optimizers",
        type=_optimizer_list,
        default=list(OPTIMIZERS),
        help="comma-separated subset of sgd,eva,kfac (default: all three)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and data order")
    args = parser.parse_args(argv)
    if args.train_size > 60_000:
        parser.error(
            f"argument --train-size: at most 60000 (MNIST's training set), got {args.train_size}"
        )
    return args


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _optimizer_list(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in OPTIMIZERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"choose from {','.join(OPTIMIZERS)} (comma-separated), got {text!r}"
        )
    return [name for name in OPTIMIZERS if name in names]  # fixed order, no duplicates


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 2000) -> float:
    """Mean per-image reconstruction loss of ``model`` on ``images``.

    Args:
        model: The autoencoder.
        images: Images of shape ``(N, 784)``.
        batch_size: Images per forward pass. Default: 2000.

    Returns:
        The loss averaged over all ``N`` images.
    """
    was_training = model.training
    model.eval()
    total = 0.0
    for chunk in images.split(batch_size):
        total += reconstruction_loss(model(chunk), chunk).item() * chunk.shape[0]
    model.train(was_training)
    return total / images.shape[0]


def train_one(
    name: str,
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    epochs: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """Train a fresh autoencoder with optimizer ``name`` and record its losses.

    Every run starts from the same weights and sees the same batches (both drawn from ``seed``).

    Args:
        name: One of :data:`OPTIMIZERS`.
        train_images: Training images ``(N, 784)``.
        test_images: Test images ``(M, 784)``.
        epochs: Number of passes over ``train_images``.
        batch_size: Images per step (the last batch of an epoch may be smaller).
        seed: Seed for the initial weights and the data order.

    Returns:
        The run's record: hyper-parameters, per-step and per-epoch losses, final losses, seconds.
    """
    settings = compose_optimizer(name, OVERRIDES)
    torch.manual_seed(seed)
    model = Autoencoder()
    optimizer, preconditioner = build_optimizer(settings, model)
    n = train_images.shape[0]
    steps_per_epoch = -(-n // batch_size)
    total_steps = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total_steps)
    order = torch.Generator().manual_seed(seed)

    step_losses: list[float] = []
    epoch_records: list[dict[str, float]] = []
    train_seconds = 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        batch_losses = []
        for idx in torch.randperm(n, generator=order).split(batch_size):
            batch = train_images[idx]
            optimizer.zero_grad()
            loss = reconstruction_loss(model(batch), batch)
            loss.backward()
            if preconditioner is not None:
                preconditioner.step()
            optimizer.step()
            schedule.step()
            batch_losses.append(loss.detach())
        losses = torch.stack(batch_losses).tolist()  # one host sync per epoch
        train_seconds += time.perf_counter() - start
        step_losses.extend(losses)
        record = {
            "epoch": epoch,
            "train_loss_running": sum(losses) / len(losses),
            "test_loss": evaluate(model, test_images),
            "train_seconds": train_seconds,
        }
        epoch_records.append(record)
        print(
            f"[{name:>4}] epoch {epoch:>3}/{epochs}"
            f"  train (running mean) {record['train_loss_running']:9.3f}"
            f"  test {record['test_loss']:9.3f}  {train_seconds:7.1f} s",
            flush=True,
        )

    pre = settings.preconditioner
    hparams: dict[str, Any] = {} if pre is None else OmegaConf.to_container(pre, resolve=True)  # type: ignore[assignment]
    return {
        "lr": settings.lr,
        "momentum": settings.momentum,
        "weight_decay": settings.weight_decay,
        "preconditioner": {k: v for k, v in hparams.items() if k != "_target_"},
        "train_loss": evaluate(model, train_images),
        "test_loss": epoch_records[-1]["test_loss"],
        "train_seconds": train_seconds,
        "epochs": epoch_records,
        "step_losses": step_losses,
    }


def machine_description() -> dict[str, Any]:
    """Describe the machine and software the demo ran on.

    Returns:
        CPU model, core count, torch threads, platform, Python and torch versions.
    """
    cpu = cpu_model()
    return {
        "cpu": cpu or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _load_average() -> float | None:
    """1-minute load average (other work on the machine skews the seconds), None if unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def plot(results: dict[str, dict[str, Any]], steps_per_epoch: int, path: Path) -> None:
    """Write the training-loss curves (per step, log scale) and test loss per epoch to ``path``.

    Args:
        results: Run records keyed by optimizer name, as returned by :func:`train_one`.
        steps_per_epoch: Steps in one epoch (to put the test points on the step axis).
        path: The PNG file to write.
    """
    labels = {"sgd": "SGD (momentum 0.9)", "eva": "Eva", "kfac": "K-FAC"}
    fig = Figure(figsize=(11, 4.2))
    ax_train, ax_test = fig.subplots(1, 2)
    for name, run in results.items():
        steps = range(1, len(run["step_losses"]) + 1)
        ax_train.plot(steps, run["step_losses"], label=labels[name], linewidth=1.2)
        epochs = [r["epoch"] * steps_per_epoch for r in run["epochs"]]
        ax_test.plot(epochs, [r["test_loss"] for r in run["epochs"]], "o-", label=labels[name])
    for ax, title in ((ax_train, "training loss (each batch)"), (ax_test, "test loss (per epoch)")):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("step")
        ax.set_ylabel("BCE per image (nats)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("8-layer autoencoder on MNIST")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo.

    Args:
        argv: Command-line arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The record written to ``demo.json``.
    """
    args = parse_args(argv)
    wall_start = time.perf_counter()
    load_at_start = _load_average()
    train_images, _ = load_mnist("train")
    test_images, _ = load_mnist("test")
    train_images = train_images[: args.train_size]
    steps_per_epoch = -(-args.train_size // args.batch_size)
    print(
        f"MNIST autoencoder: {args.train_size} training images, {test_images.shape[0]} test "
        f"images, batch {args.batch_size} ({steps_per_epoch} steps/epoch), {args.epochs} epochs",
        flush=True,
    )

    results = {
        name: train_one(name, train_images, test_images, args.epochs, args.batch_size, args.seed)
        for name in args.optimizers
    }

    print(f"\n{'optimizer':<10}{'lr':>8}{'train loss':>12}{'test loss':>12}{'train s':>10}")
    for name, run in results.items():
        print(
            f"{name:<10}{run['lr']:>8g}{run['train_loss']:>12.3f}{run['test_loss']:>12.3f}"
            f"{run['train_seconds']:>10.1f}"
        )

    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": shlex.join(
            ["python", "-m", "scripts.demo", *(sys.argv[1:] if argv is None else argv)]
        ),
        "config": {
            "epochs": args.epochs,
            "train_size": args.train_size,
            "test_size": test_images.shape[0],
            "batch_size": args.batch_size,
            "seed": args.seed,
            "lr_schedule": "linear decay to 0 over all steps",
            "loss": "BCE-with-logits summed over 784 pixels, mean over images (nats/image)",
            "model": "Autoencoder(784-1000-500-250-30-250-500-1000-784)",
            "optimizer_overrides": list(OVERRIDES),
        },
        "machine": {**machine_description(), "load_average_1min": [load_at_start, _load_average()]},
        "results": results,
        "wall_seconds": time.perf_counter() - wall_start,
    }
    plot(results, steps_per_epoch, args.out / "demo.png")
    record["wall_seconds"] = time.perf_counter() - wall_start
    (args.out / "demo.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(
        f"\nwrote {args.out / 'demo.json'} and {args.out / 'demo.png'} "
        f"({record['wall_seconds']:.0f} s in all)"
    )
    return record


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as error:  # missing MNIST: one line, not a traceback
        raise SystemExit(f"demo.py: error: {error}") from None

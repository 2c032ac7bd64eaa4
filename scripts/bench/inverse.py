"""Time the ways K-FAC/FOOF and Shampoo can invert their damped factors, on this device.

K-FAC's refresh inverts ``M + γI`` for every factor (``eva.kfac.damped_inverse``); Shampoo takes
``(M + γI)^(-1/4)`` through ``eigh`` (``eva.shampoo.inverse_root``). This measures candidate
methods at the factor sizes of the CIFAR models (ResNet-110: 16–576, VGG-19: up to 4608), with
their accuracy, so the library uses the fastest one that is accurate::

    python -m scripts.bench inverse [--device cuda] [--sizes 64,576,4608] [--out results/bench]

Writes ``inverse-<device>.md`` and prints it. Medians of ``--reps`` timed calls after a warm-up
(CUDA: synchronised before and after each call).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from harness.machine import device_name, device_tag

Method = Callable[[Tensor, float], Tensor]


def _eye(m: Tensor) -> Tensor:
    return torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)


def chol_inverse(m: Tensor, damping: float) -> Tensor:
    return torch.cholesky_inverse(torch.linalg.cholesky_ex(m + damping * _eye(m)).L)


def chol_solve(m: Tensor, damping: float) -> Tensor:
    eye = _eye(m)
    return torch.cholesky_solve(eye.expand_as(m), torch.linalg.cholesky_ex(m + damping * eye).L)


def lu_inverse(m: Tensor, damping: float) -> Tensor:
    return torch.linalg.inv_ex(m + damping * _eye(m)).inverse


def eigh_power(power: float, dtype: torch.dtype | None) -> Method:
    def method(m: Tensor, damping: float) -> Tensor:
        values, q = torch.linalg.eigh(m.to(dtype) if dtype else m)
        scale = (values.clamp(min=0) + damping).pow(power)
        return ((q * scale.unsqueeze(-2)) @ q.mT).to(m.dtype)

    return method


INVERSES: dict[str, Method] = {
    "cholesky_inverse (eva.kfac)": chol_inverse,
    "cholesky_solve(I)": chol_solve,
    "inv_ex (LU)": lu_inverse,
    "eigh float32": eigh_power(-1.0, None),
}
ROOTS: dict[str, Method] = {
    "eigh float64 (eva.shampoo)": eigh_power(-0.25, torch.float64),
    "eigh float32": eigh_power(-0.25, None),
}


def factor(n: int, batch: int, device: torch.device, seed: int) -> Tensor:
    """Batch-mean outer products of ``2n`` random rows, like a K-FAC factor (float32)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rows = torch.randn(batch, 2 * n, n, generator=gen).to(device)
    return (rows.mT @ rows / (2 * n)).squeeze(0) if batch == 1 else rows.mT @ rows / (2 * n)


def error(m: Tensor, damping: float, x: Tensor, power: float) -> float:
    """Relative error of ``x`` against ``(M + γI)^power`` computed in float64."""
    want = eigh_power(power, torch.float64)(m.double(), damping)
    return float(torch.linalg.norm(x.double() - want) / torch.linalg.norm(want))


def time_call(fn: Callable[[], Tensor], device: torch.device, reps: int) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    seconds = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) * 1e3


def _sizes(text: str) -> list[int]:
    """``--sizes``: comma-separated matrix sizes, each an integer >= 1."""
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers, got {text!r}") from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    return sizes


def main(argv: Sequence[str]) -> int:
    """The ``inverse`` sub-command: time the candidates, write ``inverse-<device>.md``."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench inverse", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=_sizes, default=_sizes("64,256,576,1024,2304,4608"))
    parser.add_argument("--batch", type=int, default=8, help="also time a stack of this many")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--damping", type=float, default=0.03**0.5)
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sizes = args.sizes
    name = device_name(device)
    lines = [
        f"# Factor inverses on {name} (torch {torch.__version__})",
        "",
        f"Command: `{shlex.join(['python', '-m', 'scripts.bench', 'inverse', *argv])}`  ",
        f"Median ms per matrix of {args.reps} calls; float32 factors `RᵀR/2n` (R: 2n×n Gaussian)"
        f" + γI, γ = {args.damping:.4g}; error: ‖X − (M + γI)^p‖_F / ‖(M + γI)^p‖_F against "
        f"float64 eigh. 'stack': {args.batch} factors of that size in one batched call, per "
        "matrix.",
        "",
        "| target | method | n | ms | ms (stack) | rel. error |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for target, methods, power in (("inverse", INVERSES, -1.0), ("inverse 4th root", ROOTS, -0.25)):
        for n in sizes:
            if power != -1.0 and n > 1024:
                continue  # Shampoo's blocks are at most max_dim = 1024
            m = factor(n, 1, device, seed=n)
            stack = factor(n, args.batch, device, seed=n + 1) if args.batch > 1 else None
            for label, method in methods.items():
                ms = time_call(lambda m=m, f=method: f(m, args.damping), device, args.reps)
                ms_stack = (
                    time_call(lambda f=method, s=stack: f(s, args.damping), device, args.reps)
                    / args.batch
                    if stack is not None
                    else float("nan")
                )
                err = error(m, args.damping, method(m, args.damping), power)
                row = f"| {target} | {label} | {n} | {ms:.2f} | {ms_stack:.2f} | {err:.1e} |"
                lines.append(row)
                print(row, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"inverse-{device_tag(device)}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0

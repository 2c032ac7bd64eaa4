"""The benchmark: step time, memory and communication of every optimizer relative to SGD (the
paper's Tables 5 and 10), a phase breakdown of where Eva's time goes, and time-to-target (Fig. 5).

Step time (the default sub-command)::

    python scripts/bench.py --models resnet110,vgg19 --batch 128 --steps 20 --warmup 3 \\
        --out results/bench --optimizers \\
        sgd,adagrad,adamw,kfac@1,kfac@10,foof,shampoo@1,shampoo@10,mfac,eva,eva_f,eva_s

- ``name@N`` sets the preconditioner's ``update_interval`` to N (``kfac@10``); without ``@`` the
  library default applies (K-FAC 10, Shampoo 10, FOOF 50, the rest 1). First-order optimizers come
  from ``torch.optim`` (``sgd`` has momentum 0.9); preconditioners run on that SGD.
- Every algorithm gets its own deep copy of the same initial weights; all see the same batches
  (round r: batch r mod ``--batches`` of a pool of random batches) and are stepped in turn (round
  robin, the starting position rotating every round), so drifting machine load hits all alike.
  A step is zero_grad + forward + backward + ``preconditioner.step()`` + ``optimizer.step()``,
  timed with ``time.perf_counter`` (on CUDA with ``torch.cuda.synchronize`` before and after).
  Median and mean (the mean includes the refresh spikes of interval methods) are reported as
  ratios to SGD, and the median over rounds of the paired ratio (step / SGD's step that round).
- Memory: (a) the bytes kept between steps (parameters, gradients, optimizer and preconditioner
  state); (b) the peak of one algorithm running alone — on CUDA ``max_memory_allocated``, on CPU
  the rise of the resident-set high-water mark of a fresh, warmed-up subprocess.
- Communication: a counting reducer records the bytes of statistics each preconditioner would
  all-reduce; per step (steady state) over the bytes of all trainable gradients.
- Profile: per-phase timers for Eva (and Eva-f, Eva-s) against SGD on ``--profile-models``
  (default resnet110): forward hooks, backward hooks, statistics, preconditioning, scaling...; a
  ``torch.profiler`` table of two steps is saved beside.

Time to target (paper Fig. 5 style)::

    python scripts/bench.py time-to-target                     # MNIST autoencoder, minutes on CPU
    python scripts/bench.py time-to-target --task cifar10-resnet20   # needs the CIFAR-10 JPEGs

Outputs ``<out>/<name>.json`` (every number, the command, versions, machine, date) and
``<out>/<name>.md`` (tables). ``--quick`` runs a tiny configuration in seconds (used by the tests).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import importlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "scripts"):  # `python scripts/bench.py` puts scripts/ first
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_report import paired_ratio, render  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import eva  # noqa: E402
from eva.layers import find_layers  # noqa: E402
from harness.records import atomic_write_text, cpu_model, git_commit  # noqa: E402
from models.registry import MODELS, build_model  # noqa: E402

FIRST_ORDER = ("sgd", "adagrad", "adamw")

OPTIMIZER_HPARAMS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "adagrad": {"lr": 0.01, "weight_decay": 5e-4},
    "adamw": {"lr": 0.001, "weight_decay": 0.05},
}
"""First-order optimizers (conf/optimizer/*.yaml). Preconditioners run on the ``sgd`` entry."""

PRECONDITIONER_HPARAMS: dict[str, dict[str, Any]] = {
    "eva": {"damping": 0.03, "running_avg": 0.95, "kl_clip": 0.001},
    "eva_f": {"damping": 0.03, "running_avg": 0.95},
    "eva_s": {"damping": 0.03, "running_avg": None},
    "kfac": {"damping": 0.03, "running_avg": 0.95, "kl_clip": 0.001, "update_interval": 10},
    "foof": {"damping": 0.03, "running_avg": 1.0, "kl_clip": 0.001, "update_interval": 50},
    "shampoo": {"damping": 1e-3, "update_interval": 10},
    "mfac": {"damping": 1e-4},
}
"""Preconditioner keyword arguments (the paper's, as in conf/optimizer/*.yaml); ``@N`` overrides
``update_interval`` and ``--mfac-grads`` sets M-FAC's ``num_grads``. Others: library defaults."""

DEFAULT_OPTIMIZERS = (
    "sgd,adagrad,adamw,kfac@1,kfac@10,foof,shampoo@1,shampoo@10,mfac,eva,eva_f,eva_s"
)
DEFAULT_MODELS = "resnet110,vgg19,wrn28_10,resnet50,inception_v4,vit_b16"
IMAGENET_SIZES = {"resnet50": 224, "inception_v4": 299, "vit_b16": 224, "efficientnet_b0": 224}
"""ImageNet models and their input resolution (Inception-v4 takes 299×299)."""

PROFILE_PHASES: tuple[tuple[str, int], ...] = (
    ("total", 0),
    ("forward", 1),
    ("forward hooks", 2),
    ("backward", 1),
    ("backward hooks", 2),
    ("preconditioner.step", 1),
    ("reduce statistics", 2),
    ("gradient statistics", 2),
    ("update state", 2),
    ("gather gradients", 2),
    ("precondition", 2),
    ("scaling", 2),
    ("write back", 2),
    ("other", 2),
    ("optimizer.step", 1),
)
"""Rows of the phase profile and their nesting (a row at depth d+1 is part of the row above)."""

STEP_PARTS = (
    "reduce statistics",
    "gradient statistics",
    "update state",
    "gather gradients",
    "precondition",
    "scaling",
    "write back",
)
"""The timed parts of ``preconditioner.step``; the rest of it is reported as ``other``."""

TIMED_METHODS = (
    ("_forward_hook", "forward hooks"),
    ("_grad_hook", "backward hooks"),
    ("_current_statistics", "reduce statistics"),
    ("gradient_statistics", "gradient statistics"),
    ("update_states", "update state"),
    ("gradient", "gather gradients"),
    ("precondition_all", "precondition"),
    ("write_gradient", "write back"),
)
"""Preconditioner methods wrapped by the phase timer, and the phase each one is counted in.
``precondition`` and ``update_state`` themselves are not wrapped: the step looks at which class
defines them to choose its in-place and ``torch._foreach`` paths."""

OVERRIDES_ONLY = frozenset({"gradient_statistics"})
"""Wrapped only where the algorithm overrides the base class's (same reason)."""

TIMED_FUNCTIONS = (
    ("eva.preconditioner", "apply_scaling", "scaling"),
    ("eva.rank_one", "rank_one_step", "precondition"),
)
"""Module functions timed as a phase: the scaling of the generic path, and the in-place step of
Eva and Eva-f (precondition, scaling and write-back in one)."""


# --------------------------------------------------------------------------- small helpers
def log(message: str) -> None:
    """Print a progress line at once."""
    print(message, flush=True)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_bytes(obj: Any, seen: set[tuple[str, int]] | None = None) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj`` (dicts, lists, tuples).

    A storage shared by several tensors (views) counts once, in full: that is what it keeps alive.
    """
    seen = set() if seen is None else seen
    if isinstance(obj, Tensor):
        storage = obj.untyped_storage()
        key = (str(obj.device), storage.data_ptr())
        if key in seen or storage.nbytes() == 0:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v, seen) for v in obj)
    return 0


class CountingReducer:
    """A reducer that averages nothing (one worker) but records what would be all-reduced.

    Satisfies :class:`eva.comm.Reducer`: ``world_size`` is 1, so no statistic is rescaled.
    """

    world_size = 1

    def __init__(self) -> None:
        self.calls = 0
        self.bytes = 0
        self.call_bytes: list[int] = []

    def average(self, tensors: list[Tensor]) -> None:
        """Record ``sum(t.nbytes)`` of this call."""
        n = sum(t.nbytes for t in tensors)
        self.calls += 1
        self.bytes += n
        self.call_bytes.append(n)


def parse_label(label: str) -> tuple[str, int | None]:
    """``"kfac@10"`` → ``("kfac", 10)``; ``"eva"`` → ``("eva", None)``.

    Raises:
        ValueError: an unknown name, an interval that is not an integer ≥ 1, or ``@`` on a
            first-order optimizer.
    """
    base, at, every = label.partition("@")
    known = (*FIRST_ORDER, *eva.PRECONDITIONERS)
    if base not in known:
        raise ValueError(f"unknown optimizer {base!r}; choose from {', '.join(known)}")
    if not at:
        return base, None
    if base in FIRST_ORDER:
        raise ValueError(f"{label!r}: first-order optimizers have no update interval")
    if not every.isdigit() or int(every) < 1:
        raise ValueError(f"{label!r}: the update interval after '@' must be an integer >= 1")
    return base, int(every)


def _label_list(text: str) -> list[str]:
    labels = [s.strip().lower() for s in text.split(",") if s.strip()]
    if not labels:
        raise argparse.ArgumentTypeError("give at least one optimizer")
    for label in labels:
        try:
            parse_label(label)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return list(dict.fromkeys(labels))


def _model_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {unknown}; choose from {', '.join(sorted(MODELS))}"
        )
    return list(dict.fromkeys(names))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def device_tag(device: torch.device) -> str:
    """``cpu`` or e.g. ``cuda-nvidia-h100-80gb-hbm3``: used in default output names."""
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower()
    return "cuda-" + "".join(c if c.isalnum() else "-" for c in name).strip("-")


def machine_description(device: torch.device) -> dict[str, Any]:
    """Device, CPU, thread count and software versions."""
    cpu = cpu_model()
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "cpu": cpu or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(REPO_ROOT),
    }


def now() -> str:
    """The local date and time, ISO 8601 with the UTC offset."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def command_line(argv: Sequence[str]) -> str:
    """The command as a user would type it from the repository root."""
    return shlex.join(["python", "scripts/bench.py", *argv])


def write_outputs(record: dict[str, Any], out: Path, name: str) -> tuple[Path, Path]:
    """Write ``<out>/<name>.json`` and ``<out>/<name>.md`` (atomically)."""
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    atomic_write_text(json_path, json.dumps(record, indent=1, allow_nan=True) + "\n")
    atomic_write_text(md_path, render(record))
    return json_path, md_path


# --------------------------------------------------------------------------- models and batches
@dataclass(frozen=True)
class Workload:
    """A model name with the input it is benchmarked on."""

    model: str
    batch: int
    input_shape: tuple[int, ...]
    num_classes: int | None  # None: autoencoder (targets are the inputs)

    def build(self, seed: int) -> nn.Module:
        """The model with the initial weights of ``seed``."""
        torch.manual_seed(seed)
        if self.num_classes is None:
            return build_model(self.model)
        return build_model(self.model, num_classes=self.num_classes)

    def batch_tensors(self, seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """A random batch: inputs ~ N(0, 1) (autoencoder: U[0, 1)), random labels."""
        gen = torch.Generator().manual_seed(seed + 1)
        if self.num_classes is None:
            x = torch.rand(self.batch, *self.input_shape, generator=gen)
            return x.to(device), x.to(device)
        x = torch.randn(self.batch, *self.input_shape, generator=gen)
        y = torch.randint(0, self.num_classes, (self.batch,), generator=gen)
        return x.to(device), y.to(device)

    def batch_pool(self, seed: int, device: torch.device, n: int) -> list[tuple[Tensor, Tensor]]:
        """``n`` distinct random batches (seeds ``seed``, ``seed + 1``, ...)."""
        return [self.batch_tensors(seed + i, device) for i in range(n)]

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy, or the autoencoder's per-image BCE."""
        if self.num_classes is None:
            return F.binary_cross_entropy_with_logits(output, target, reduction="sum") / len(output)
        return F.cross_entropy(output, target)


def workload(model: str, batch: int, imagenet_batch: int, image_size: int = 32) -> Workload:
    """CIFAR models at 3×32×32 (``image_size``) and 10 classes; ImageNet models at their own
    resolution and 1000 classes; the autoencoder on 784-vectors."""
    if model == "autoencoder":
        return Workload(model, batch, (784,), None)
    if model in IMAGENET_SIZES:
        size = IMAGENET_SIZES[model]
        return Workload(model, imagenet_batch, (3, size, size), 1000)
    return Workload(model, batch, (3, image_size, image_size), 10)


# --------------------------------------------------------------------------- one algorithm
@dataclass
class Contender:
    """One algorithm's model copy, optimizer and preconditioner."""

    label: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    preconditioner: eva.Preconditioner | None
    reducer: CountingReducer | None
    hparams: dict[str, Any]
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    last_loss: Tensor | None = None

    def step(self, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """One full training step; returns the (detached) loss."""
        self.optimizer.zero_grad()
        loss = loss_fn(self.model(x), y)
        loss.backward()
        if self.preconditioner is not None:
            self.preconditioner.step()
        self.optimizer.step()
        return loss.detach()


def algorithm_hparams(label: str, mfac_grads: int) -> dict[str, Any]:
    """What an algorithm is built with (recorded in the JSON).

    Returns:
        ``{"optimizer": name, "optimizer_kwargs": {...}}`` plus, for a preconditioner,
        ``"preconditioner": name, "preconditioner_kwargs": {...}``.
    """
    base, interval = parse_label(label)
    if base in FIRST_ORDER:
        return {"optimizer": base, "optimizer_kwargs": dict(OPTIMIZER_HPARAMS[base])}
    kwargs = dict(PRECONDITIONER_HPARAMS.get(base, {}))
    if interval is not None:
        kwargs["update_interval"] = interval
    if base == "mfac":
        kwargs["num_grads"] = mfac_grads
    return {
        "optimizer": "sgd",
        "optimizer_kwargs": dict(OPTIMIZER_HPARAMS["sgd"]),
        "preconditioner": base,
        "preconditioner_kwargs": kwargs,
    }


OPTIMIZER_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "adamw": torch.optim.AdamW,
}


def build_contender(
    label: str,
    model: nn.Module,
    mfac_grads: int,
    lr: float | None = None,
    preconditioner_class: type[eva.Preconditioner] | None = None,
) -> Contender:
    """Wrap ``model`` (already on its device) with the optimizer/preconditioner of ``label``.

    Args:
        label: e.g. ``"sgd"``, ``"kfac@10"``.
        model: The model copy this algorithm owns.
        mfac_grads: M-FAC's ``num_grads``.
        lr: Overrides the optimizer's learning rate (time-to-target).
        preconditioner_class: Use this class instead of the registered one (the phase timer's
            instrumented subclass).
    """
    hparams = algorithm_hparams(label, mfac_grads)
    if lr is not None:
        hparams["optimizer_kwargs"]["lr"] = lr
    optimizer_cls = OPTIMIZER_CLASSES[hparams["optimizer"]]
    optimizer = optimizer_cls(model.parameters(), **hparams["optimizer_kwargs"])
    pre, reducer = None, None
    if "preconditioner" in hparams:
        reducer = CountingReducer()
        cls = preconditioner_class or eva.PRECONDITIONERS[hparams["preconditioner"]]
        pre = cls(model, optimizer, reducer=reducer, **hparams["preconditioner_kwargs"])
    return Contender(label, model, optimizer, pre, reducer, hparams)


def mfac_buffer_bytes(model: nn.Module, mfac_grads: int) -> int:
    """Bytes of M-FAC's gradient windows: ``num_grads`` copies of the preconditioned gradients."""
    per_copy = sum(
        sum(p.numel() * p.element_size() for p in layer.parameters())
        for layer in find_layers(model)
    )
    return mfac_grads * per_copy


def memory_budget(device: torch.device) -> int:
    """Total memory of the device (CUDA) or the machine (CPU), in bytes."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# --------------------------------------------------------------------------- step time
def time_round_robin(
    contenders: dict[str, Contender],
    batches: list[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    steps: int,
    warmup: int,
    device: torch.device,
    tag: str,
    loads: list[float] | None = None,
) -> dict[str, str]:
    """Step every contender in turn, ``warmup + steps`` rounds; fill ``Contender.times``.

    Round ``r`` gives every contender batch ``r mod len(batches)``. The round's starting position
    rotates so that no algorithm always follows the same one.
    Python's garbage collector runs between rounds, never inside a timed step. The 1-minute load
    average after each round is appended to ``loads``.

    Returns:
        ``{label: error}`` for algorithms whose step raised (they leave the rotation).
    """
    failed: dict[str, str] = {}
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(warmup + steps):
            active = [label for label in contenders if label not in failed]
            k = r % len(active)
            x, y = batches[r % len(batches)]
            line = []
            for label in active[k:] + active[:k]:
                c = contenders[label]
                try:
                    synchronize(device)
                    cpu_start, start = time.process_time(), time.perf_counter()
                    loss = c.step(x, y, loss_fn)
                    synchronize(device)
                    seconds = time.perf_counter() - start
                    cpu_seconds = time.process_time() - cpu_start
                except (RuntimeError, MemoryError) as err:  # e.g. out of memory
                    failed[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                    log(f"[{tag}] {label} failed: {failed[label]}")
                    c.model = c.optimizer = c.preconditioner = None  # type: ignore[assignment]
                    gc.collect()
                    continue
                c.last_loss = loss
                if r >= warmup:
                    c.times.append(seconds)
                    c.cpu_times.append(cpu_seconds)
                line.append(f"{label} {1e3 * seconds:.0f}")
            gc.collect()
            load = os.getloadavg()[0]
            if loads is not None:
                loads.append(load)
            phase = "warm-up" if r < warmup else "timed"
            log(
                f"[{tag}] round {r + 1}/{warmup + steps} ({phase}, load {load:.1f}) ms: "
                + ", ".join(line)
            )
    finally:
        if gc_enabled:
            gc.enable()
    if "sgd" in failed:
        raise RuntimeError(f"[{tag}] the SGD baseline failed: {failed['sgd']}")
    return failed


def summarize_times(seconds: list[float]) -> dict[str, Any]:
    """Median, mean, min, max and all step times, in milliseconds."""
    ms = [1e3 * s for s in seconds]
    return {
        "median": statistics.median(ms),
        "mean": statistics.fmean(ms),
        "min": min(ms),
        "max": max(ms),
        "stdev": statistics.stdev(ms) if len(ms) > 1 else 0.0,
        "all": ms,
    }


def state_bytes(c: Contender) -> dict[str, int]:
    """Bytes kept between steps: parameters, gradients, optimizer and preconditioner state."""
    params = [p for p in c.model.parameters()]
    out = {
        "params": sum(p.numel() * p.element_size() for p in params),
        "grads": sum(p.numel() * p.element_size() for p in params if p.requires_grad),
        "optimizer": tensor_bytes(c.optimizer.state_dict()["state"]),
        "preconditioner": 0 if c.preconditioner is None else tensor_bytes(
            c.preconditioner.state_dict()
        ),
    }  # fmt: skip
    out["total"] = sum(out.values())
    return out


def communication(c: Contender, grad_bytes: int) -> dict[str, Any]:
    """Statistics bytes all-reduced per step, against the gradient bytes.

    Steady state: bytes per refresh (per reducer call) / update interval. The measured average
    over the steps taken (warm-up included) is recorded too.
    """
    if c.reducer is None or c.preconditioner is None:
        return {"calls": 0, "bytes_per_refresh": 0, "per_step": 0.0, "ratio": 0.0, "steps": None}
    pre, red = c.preconditioner, c.reducer
    per_refresh = red.bytes / red.calls if red.calls else 0.0
    per_step = per_refresh / pre.update_interval
    return {
        "calls": red.calls,
        "steps": pre.steps,
        "bytes_total": red.bytes,
        "bytes_per_refresh": per_refresh,
        "update_interval": pre.update_interval,
        "per_step": per_step,
        "per_step_measured": red.bytes / pre.steps if pre.steps else 0.0,
        "grad_bytes": grad_bytes,
        "ratio": per_step / grad_bytes,
    }


def benchmark_model(
    work: Workload, labels: list[str], args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Time, measure and profile every algorithm on one model; returns the model's record."""
    tag = work.model
    load_before = os.getloadavg()
    initial = work.build(args.seed)
    batches = work.batch_pool(args.seed, device, min(args.batches, args.warmup + args.steps))
    trainable = [p for p in initial.parameters() if p.requires_grad]
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    entry: dict[str, Any] = {
        "batch": work.batch,
        "input_shape": list(work.input_shape),
        "num_classes": work.num_classes,
        "params": sum(p.numel() for p in initial.parameters()),
        "grad_bytes": grad_bytes,
        "preconditioned_layers": len(find_layers(initial)),
        "algorithms": {},
        "skipped": {},
    }
    log(
        f"[{tag}] batch {work.batch}, input {work.input_shape}, {entry['params'] / 1e6:.2f} M "
        f"params, {entry['preconditioned_layers']} Linear/Conv2d layers; "
        f"{len(labels)} algorithms × ({args.warmup} warm-up + {args.steps} timed) steps"
    )
    contenders: dict[str, Contender] = {}
    mfac_limit = args.mfac_max_fraction * memory_budget(device)
    for label in labels:
        base, _ = parse_label(label)
        if base == "mfac":
            need = mfac_buffer_bytes(initial, args.mfac_grads)
            if need > mfac_limit:
                entry["skipped"][label] = (
                    f"M-FAC's {args.mfac_grads} gradient copies need {need / 2**30:.1f} GiB, over "
                    f"--mfac-max-fraction {args.mfac_max_fraction} of {device.type} memory"
                )
                log(f"[{tag}] skip {label}: {entry['skipped'][label]}")
                continue
        try:
            contenders[label] = build_contender(
                label, copy.deepcopy(initial).to(device), args.mfac_grads
            )
        except (ValueError, RuntimeError, MemoryError) as err:
            entry["skipped"][label] = f"could not be built: {err}"
            log(f"[{tag}] skip {label}: {entry['skipped'][label]}")

    loads: list[float] = []
    failed = time_round_robin(
        contenders, batches, work.loss, args.steps, args.warmup, device, tag, loads
    )
    entry["load_average"] = {
        "before": list(load_before),
        "after_timing": list(os.getloadavg()),
        "per_round_1min": loads,
    }
    for label in labels:
        if label in entry["skipped"]:
            continue
        c = contenders[label]
        if label in failed:
            entry["algorithms"][label] = {"hparams": c.hparams, "error": failed[label]}
            continue
        loss = float(c.last_loss) if c.last_loss is not None else math.nan
        algo = {
            "hparams": c.hparams,
            "time_ms": summarize_times(c.times),
            "cpu_time_ms": summarize_times(c.cpu_times),
            "state_bytes": state_bytes(c),
            "comm": communication(c, grad_bytes),
            "final_loss": loss,
            "error": None,
        }
        if not math.isfinite(loss):
            algo["note"] = "the loss became non-finite during the benchmark (timing still valid)"
        entry["algorithms"][label] = algo
    sgd = entry["algorithms"]["sgd"]
    for algo in entry["algorithms"].values():
        if algo.get("error"):
            continue
        algo["time_ratio_median"] = algo["time_ms"]["median"] / sgd["time_ms"]["median"]
        algo["time_ratio_mean"] = algo["time_ms"]["mean"] / sgd["time_ms"]["mean"]
        algo["time_ratio_paired"] = paired_ratio(algo["time_ms"]["all"], sgd["time_ms"]["all"])
        algo["cpu_time_ratio_median"] = algo["cpu_time_ms"]["median"] / sgd["cpu_time_ms"]["median"]
        algo["state_ratio"] = algo["state_bytes"]["total"] / sgd["state_bytes"]["total"]
    del contenders
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if tag in args.profile_models:
        entry["profile"] = {}
        for label in args.profile_optimizers:
            if label in entry["algorithms"] and not entry["algorithms"][label].get("error"):
                entry["profile"][label] = profile_phases(
                    work, initial, batches, label, args, device
                )

    if args.peak_memory != "none":
        measure = peak_memory_cuda if args.peak_memory == "cuda" else peak_memory_subprocess
        for label, algo in entry["algorithms"].items():
            if algo.get("error"):
                continue
            log(f"[{tag}] peak memory of {label} alone ({args.peak_memory})")
            algo["peak_memory"] = measure(work, label, args, device, initial)
        base = entry["algorithms"]["sgd"]["peak_memory"].get("bytes")
        for algo in entry["algorithms"].values():
            peak = algo.get("peak_memory")
            if peak and peak.get("bytes") is not None and base:
                peak["ratio"] = peak["bytes"] / base
    return entry


# --------------------------------------------------------------------------- peak memory
def _proc_status_bytes(field_name: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field_name}")


def _reset_peak_rss() -> None:
    """Reset the process's resident-set high-water mark (Linux >= 4.0: ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def peak_memory_subprocess(
    work: Workload,
    label: str,
    args: argparse.Namespace,
    device: torch.device,
    initial: nn.Module,
) -> dict[str, Any]:
    """Peak resident memory of ``args.peak_steps`` steps of ``label`` alone, in a fresh process.

    The child first runs one step of the algorithm on a throwaway copy (so that code pages and
    library buffers are resident), frees it, resets the resident-set high-water mark and records
    its resident memory; it then builds the model and algorithm again and runs the steps. The
    result is ``VmHWM − VmRSS before``: parameters, gradients, states, activations, temporaries.
    glibc serves every allocation above 128 KiB with ``mmap`` (``MALLOC_MMAP_THRESHOLD_``), so
    freed tensors leave the resident set and the peak tracks live memory.
    """
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "_peak-memory",
        "--model", work.model, "--optimizer", label, "--batch", str(work.batch),
        "--imagenet-batch", str(work.batch), "--seed", str(args.seed),
        "--steps", str(args.peak_steps), "--mfac-grads", str(args.mfac_grads),
        "--threads", str(torch.get_num_threads()), "--image-size", str(work.input_shape[-1]),
    ]  # fmt: skip
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("PEAK "):
            return json.loads(line[5:])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return {"bytes": None, "method": "rss", "error": f"exit {proc.returncode}: {tail}"}


def _peak_memory_child(argv: Sequence[str]) -> None:
    """Entry point of the ``_peak-memory`` subprocess (internal)."""
    parser = argparse.ArgumentParser(prog="bench.py _peak-memory")
    parser.add_argument("--model", required=True)
    parser.add_argument("--optimizer", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--imagenet-batch", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--mfac-grads", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = workload(args.model, args.batch, args.imagenet_batch, args.image_size)
    device = torch.device("cpu")
    x, y = work.batch_tensors(args.seed, device)
    # warm pass: loads every code page and library buffer the algorithm touches, then is freed
    c = build_contender(args.optimizer, work.build(args.seed), args.mfac_grads)
    c.step(x, y, work.loss)
    del c
    gc.collect()
    before = _proc_status_bytes("VmRSS")
    _reset_peak_rss()
    c = build_contender(args.optimizer, work.build(args.seed), args.mfac_grads)
    for _ in range(args.steps):
        c.step(x, y, work.loss)
    peak = _proc_status_bytes("VmHWM")
    result = {"bytes": peak - before, "method": "rss", "rss_before_model": before}
    print("PEAK " + json.dumps(result | {"peak_rss": peak, "steps": args.steps}), flush=True)


def peak_memory_cuda(
    work: Workload,
    label: str,
    args: argparse.Namespace,
    device: torch.device,
    initial: nn.Module,
) -> dict[str, Any]:
    """``max_memory_allocated`` over a few steps of ``label`` alone (minus the batch)."""
    x, y = work.batch_tensors(args.seed, device)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    holder: list[Contender] = []  # dropped before the cache is emptied
    try:
        holder.append(build_contender(label, copy.deepcopy(initial).to(device), args.mfac_grads))
        for _ in range(args.peak_steps):
            holder[0].step(x, y, work.loss)
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        result = {"bytes": peak, "method": "cuda", "steps": args.peak_steps}
    except RuntimeError as err:
        result = {"bytes": None, "method": "cuda", "error": str(err).splitlines()[0][:200]}
    holder.clear()
    gc.collect()
    torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------- phase profile
class PhaseTimer:
    """Accumulates wall time per named phase within one step (synchronising on CUDA).

    Every phase is also a ``torch.profiler.record_function`` range, so a ``torch.profiler`` trace
    shows the same names.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.current: dict[str, float] = defaultdict(float)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time the enclosed block as (part of) phase ``name``."""
        synchronize(self.device)
        start = time.perf_counter()
        with torch.profiler.record_function(name):
            try:
                yield
            finally:
                synchronize(self.device)
                self.current[name] += time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        """This step's phase totals (seconds); resets for the next step."""
        out = dict(self.current)
        self.current.clear()
        return out


def timed_subclass(cls: type[eva.Preconditioner], timer: PhaseTimer) -> type[eva.Preconditioner]:
    """A subclass of ``cls`` whose hook and step methods run inside ``timer`` sections."""

    def wrap(method: str, phase: str) -> Callable[..., Any]:
        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            with timer.section(phase):
                return getattr(super(subclass, self), method)(*args, **kwargs)

        timed.__name__ = method
        return timed

    base = eva.Preconditioner
    namespace = {
        m: wrap(m, phase)
        for m, phase in TIMED_METHODS
        if hasattr(cls, m) and (m not in OVERRIDES_ONLY or getattr(cls, m) is not getattr(base, m))
    }
    subclass = type(f"Timed{cls.__name__}", (cls,), namespace)
    return subclass


@contextmanager
def timed_functions(timer: PhaseTimer) -> Iterator[None]:
    """Count the module functions of :data:`TIMED_FUNCTIONS` as their phases while active."""
    originals = []
    for module_name, name, phase in TIMED_FUNCTIONS:
        module = importlib.import_module(module_name)
        original = getattr(module, name)
        originals.append((module, name, original))
        setattr(module, name, _timed_function(original, timer, phase))
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def _timed_function(fn: Callable[..., Any], timer: PhaseTimer, phase: str) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        with timer.section(phase):
            return fn(*args, **kwargs)

    return timed


def profiled_step(c: Contender, x: Tensor, y: Tensor, loss_fn: Callable, timer: PhaseTimer) -> None:
    """One step with its phases timed."""
    with timer.section("total"):
        c.optimizer.zero_grad()
        with timer.section("forward"):
            loss = loss_fn(c.model(x), y)
        with timer.section("backward"):
            loss.backward()
        if c.preconditioner is not None:
            with timer.section("preconditioner.step"):
                c.preconditioner.step()
        with timer.section("optimizer.step"):
            c.optimizer.step()


def profile_phases(
    work: Workload,
    initial: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    label: str,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """Per-phase medians of ``label`` and SGD (stepped alternately), plus a torch.profiler table."""
    tag = f"{work.model} profile {label}"
    timer = PhaseTimer(device)
    base, _ = parse_label(label)
    subclass = timed_subclass(eva.PRECONDITIONERS[base], timer)
    sgd = build_contender("sgd", copy.deepcopy(initial).to(device), args.mfac_grads)
    algo = build_contender(
        label, copy.deepcopy(initial).to(device), args.mfac_grads, preconditioner_class=subclass
    )
    samples: dict[str, list[dict[str, float]]] = {"sgd": [], label: []}
    with timed_functions(timer):
        for r in range(args.warmup + args.profile_steps):
            order = [sgd, algo] if r % 2 == 0 else [algo, sgd]
            x, y = batches[r % len(batches)]
            for c in order:
                timer.pop()
                profiled_step(c, x, y, work.loss, timer)
                phases = timer.pop()
                if "preconditioner.step" in phases:
                    parts = sum(phases.get(p, 0.0) for p in STEP_PARTS)
                    phases["other"] = phases["preconditioner.step"] - parts
                if r >= args.warmup:
                    samples["sgd" if c is sgd else label].append(phases)
            log(f"[{tag}] round {r + 1}/{args.warmup + args.profile_steps}")

        def medians(rows: list[dict[str, float]]) -> dict[str, float]:
            names = {k for row in rows for k in row}
            return {k: 1e3 * statistics.median(row.get(k, 0.0) for row in rows) for k in names}

        result: dict[str, Any] = {
            "batch": work.batch,
            "steps": args.profile_steps,
            "phases": [list(p) for p in PROFILE_PHASES],
            "sgd_ms": medians(samples["sgd"]),
            "algo_ms": medians(samples[label]),
            "torch_profile": None,
        }
        if args.torch_profiler:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=activities) as prof:
                for x, y in batches[:2]:
                    profiled_step(algo, x, y, work.loss, timer)
            timer.pop()
            sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            table = prof.key_averages().table(sort_by=sort, row_limit=40)
            path = args.out / f"{args.name}-{work.model}-{label}-torchprofile.txt"
            atomic_write_text(
                path, f"{label} on {work.model}, batch {work.batch}: 2 steps\n{table}"
            )
            result["torch_profile"] = str(path.relative_to(args.out))
    a, s = result["algo_ms"], result["sgd_ms"]
    log(
        f"[{tag}] total {a['total']:.1f} ms vs sgd {s['total']:.1f} ms: "
        + ", ".join(
            f"{p} {a[p]:.1f}"
            for p, depth in PROFILE_PHASES
            if depth >= 1 and p in a and p != "total"
        )
    )
    return result


# --------------------------------------------------------------------------- step-time command
def step_time_parser() -> argparse.ArgumentParser:
    """Options of the step-time benchmark (the default sub-command)."""
    parser = argparse.ArgumentParser(
        prog="python scripts/bench.py",
        description=(
            "Step time, memory and communication of optimizers relative to SGD (paper Tables 5 "
            "and 10). Sub-command 'time-to-target' runs the Fig. 5 style benchmark instead."
        ),
    )
    parser.add_argument(
        "--models",
        type=_model_list,
        default=None,
        help=f"comma-separated models (default: {DEFAULT_MODELS}; --quick: resnet20)",
    )
    parser.add_argument(
        "--optimizers",
        type=_label_list,
        default=None,
        help=f"comma-separated; name@N sets update_interval=N (default: {DEFAULT_OPTIMIZERS}); "
        "sgd is always added as the baseline",
    )
    parser.add_argument(
        "--batch",
        type=_positive_int,
        default=None,
        help="batch size of CIFAR models (default 128; --quick: 4)",
    )
    parser.add_argument(
        "--imagenet-batch",
        type=_positive_int,
        default=None,
        help="batch size of ImageNet models (default 8 on CPU, 32 on CUDA)",
    )
    parser.add_argument(
        "--image-size",
        type=_positive_int,
        default=None,
        help="height and width of CIFAR-model inputs (default 32; --quick: 16)",
    )
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="timed steps per algorithm (default 20; --quick: 2)",
    )
    parser.add_argument(
        "--warmup",
        type=_nonnegative_int,
        default=None,
        help="untimed warm-up steps per algorithm (default 3; --quick: 1)",
    )
    parser.add_argument(
        "--batches",
        type=_positive_int,
        default=10,
        help="distinct random batches, cycled over the rounds (default 10)",
    )
    parser.add_argument(
        "--mfac-grads",
        type=_positive_int,
        default=None,
        help="M-FAC num_grads (default 32 on CPU, 1024 on CUDA; --quick: 4)",
    )
    parser.add_argument(
        "--mfac-max-fraction",
        type=float,
        default=0.25,
        help="skip M-FAC when its windows need more than this fraction of the "
        "device's memory (default 0.25)",
    )
    parser.add_argument(
        "--peak-memory",
        choices=("auto", "rss", "cuda", "none"),
        default=None,
        help="peak memory of each algorithm alone: cuda max_memory_allocated, "
        "or peak RSS of a fresh subprocess on CPU (default auto; --quick: none)",
    )
    parser.add_argument(
        "--peak-steps",
        type=_positive_int,
        default=2,
        help="steps run for the peak memory (default 2)",
    )
    parser.add_argument(
        "--profile-models",
        type=str,
        default=None,
        help="models to profile phase by phase ('' for none; default resnet110 "
        "when benchmarked, else the first model)",
    )
    parser.add_argument(
        "--profile-optimizers",
        type=_label_list,
        default=None,
        help="algorithms to profile (default eva,eva_f,eva_s; --quick: eva)",
    )
    parser.add_argument(
        "--profile-steps",
        type=_positive_int,
        default=None,
        help="timed steps of the phase profile (default 10; --quick: 1)",
    )
    parser.add_argument(
        "--torch-profiler",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also save a torch.profiler table of two profiled steps",
    )
    parser.add_argument(
        "--device", default=None, help="cpu or cuda[:i] (default cuda when available)"
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch intra-op threads (default torch's)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and batch")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "results" / "bench",
        help="output folder (default results/bench)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="output file stem (default steptime-<device>, e.g. steptime-cpu)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run: resnet20, batch 4, 1+2 steps, no peak memory",
    )
    return parser


def resolve_step_time_args(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill the defaults that depend on ``--quick`` and the device."""
    cuda = device.type == "cuda"
    quick = args.quick

    def pick(value: Any, normal: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else normal)

    args.models = pick(args.models, DEFAULT_MODELS.split(","), ["resnet20"])
    every = DEFAULT_OPTIMIZERS.split(",")
    args.optimizers = pick(args.optimizers, every, every)
    if "sgd" not in args.optimizers:
        args.optimizers = ["sgd", *args.optimizers]
    args.batch = pick(args.batch, 128, 4)
    args.image_size = pick(args.image_size, 32, 16)
    args.imagenet_batch = pick(args.imagenet_batch, 32 if cuda else 8, 2)
    args.steps = pick(args.steps, 20, 2)
    args.warmup = pick(args.warmup, 3, 1)
    args.mfac_grads = pick(args.mfac_grads, 1024 if cuda else 32, 4)
    peak = pick(args.peak_memory, "auto", "none")
    args.peak_memory = ("cuda" if cuda else "rss") if peak == "auto" else peak
    if args.peak_memory == "cuda" and not cuda:
        raise SystemExit("bench.py: error: --peak-memory cuda needs a CUDA device")
    if args.profile_models is None:
        args.profile_models = ["resnet110"] if "resnet110" in args.models else args.models[:1]
    else:
        args.profile_models = [m.strip() for m in args.profile_models.split(",") if m.strip()]
    default_profile = ["eva"] if quick else ["eva", "eva_f", "eva_s"]
    args.profile_optimizers = [
        o
        for o in pick(args.profile_optimizers, default_profile, default_profile)
        if o in args.optimizers and o != "sgd" and parse_label(o)[0] not in FIRST_ORDER
    ]
    args.profile_steps = pick(args.profile_steps, 10, 1)
    args.name = args.name or f"steptime-{device_tag(device)}"
    return args


def run_step_time(argv: Sequence[str]) -> dict[str, Any]:
    """The step-time benchmark; returns the record it writes."""
    args = step_time_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    args = resolve_step_time_args(args, device)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "kind": "step-time",
        "command": command_line(argv),
        "date": now(),
        "machine": machine_description(device),
        "config": {
            "models": args.models,
            "optimizers": args.optimizers,
            "batch": args.batch,
            "imagenet_batch": args.imagenet_batch,
            "image_size": args.image_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "seed": args.seed,
            "mfac_grads": args.mfac_grads,
            "mfac_max_fraction": args.mfac_max_fraction,
            "peak_memory": None if args.peak_memory == "none" else args.peak_memory,
            "peak_steps": args.peak_steps,
            "profile_models": args.profile_models,
            "profile_optimizers": args.profile_optimizers,
            "profile_steps": args.profile_steps,
            "order": "round robin, starting position rotating by one every round",
            "batches": min(args.batches, args.warmup + args.steps),
            "data": "a pool of random batches (inputs N(0,1), random labels); round r gives "
            "every algorithm batch r mod pool size",
            "reducer": "CountingReducer (world_size 1: records bytes, averages nothing)",
        },
        "definitions": {
            "time_ratio_median": "median step time / SGD's median step time",
            "time_ratio_mean": "mean step time (refresh spikes included) / SGD's mean",
            "time_ratio_paired": "median over rounds of step time / SGD's step time in the same "
            "round",
            "cpu_time_ratio_median": "median process CPU time per step (all threads, "
            "time.process_time) / SGD's: less sensitive to being descheduled by other processes",
            "state_ratio": "(params + grads + optimizer state + preconditioner state bytes) / "
            "SGD's",
            "peak_memory.ratio": "rss: resident-set high-water mark of a fresh, warmed-up "
            "process running the algorithm alone, minus its resident memory before the model was "
            "built, / SGD's; cuda: max_memory_allocated of the algorithm alone, / SGD's",
            "comm.ratio": "statistics bytes all-reduced per step (bytes per refresh / update "
            "interval) / bytes of all trainable gradients",
        },
        "models": {},
    }
    for model in args.models:
        work = workload(model, args.batch, args.imagenet_batch, args.image_size)
        record["models"][model] = benchmark_model(work, args.optimizers, args, device)
        record["wall_seconds"] = time.perf_counter() - started
        write_outputs(record, args.out, args.name)  # partial results survive an interruption
    record["wall_seconds"] = time.perf_counter() - started
    json_path, md_path = write_outputs(record, args.out, args.name)
    print()
    print(md_path.read_text(encoding="utf-8"))
    log(f"wrote {json_path} and {md_path} ({record['wall_seconds']:.0f} s in all)")
    return record


# --------------------------------------------------------------------------- time to target
@dataclass
class Task:
    """A training problem for time-to-target: data in memory, a model factory, a loss."""

    name: str
    description: str
    loss_description: str
    train_x: Tensor
    train_y: Tensor
    build: Callable[[], nn.Module]
    loss: Callable[[Tensor, Tensor], Tensor]
    lrs: dict[str, float]
    tuned: tuple[str, ...]


def ae_loss(logits: Tensor, images: Tensor) -> Tensor:
    """Binary cross-entropy summed over pixels, averaged over images (as scripts/demo.py)."""
    return F.binary_cross_entropy_with_logits(logits, images, reduction="sum") / images.shape[0]


def mnist_task(train_size: int) -> Task:
    """The deep autoencoder on the first ``train_size`` MNIST training images (paper Fig. 4/5)."""
    from data.mnist import load_mnist
    from models.autoencoder import Autoencoder

    images, _ = load_mnist("train")
    images = images[:train_size]
    return Task(
        name="mnist-autoencoder",
        description=f"MNIST autoencoder 784-1000-500-250-30 ({len(images)} training images)",
        loss_description="BCE summed over pixels, mean over images",
        train_x=images,
        train_y=images,
        build=Autoencoder,
        loss=ae_loss,
        # SGD's lr is scripts/demo.py's (best of 0.003-0.02); Eva and K-FAC take SGD's (their KL
        # clipping makes them insensitive to it, see scripts/demo.py); Shampoo: 0.005 and 0.002
        # diverge (NaN within 40 steps), 0.001 is the largest of the three that trains
        lrs={
            "sgd": 0.005, "eva": 0.005, "kfac": 0.005, "shampoo": 0.001, "eva_s": 0.005,
            "foof": 0.005, "eva_f": 0.005, "adagrad": 0.01, "adamw": 0.001, "mfac": 1e-4,
        },
        tuned=("sgd", "shampoo"),
    )  # fmt: skip


def cifar_task(train_size: int, root: Path | None, tarball: Path) -> Task:
    """ResNet-20 on ``train_size`` CIFAR-10 JPEG training images (a fixed random subset; no
    augmentation)."""
    from data import cifar
    from data.registry import build_dataset

    splits = build_dataset("cifar10_images", root=root, tarball=tarball)
    images, labels = splits.train  # type: ignore[misc]
    # the folder layout is sorted by class: take a fixed random subset, not the first images
    keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:train_size]
    images, labels = images[keep], labels[keep]
    mean = torch.tensor(cifar.CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cifar.CIFAR10_STD).view(1, 3, 1, 1)
    x = (images.float() / 255 - mean) / std
    return Task(
        name="cifar10-resnet20",
        description=f"CIFAR-10 (JPEG copy) ResNet-20 ({len(x)} training images, no augmentation)",
        loss_description="cross-entropy",
        train_x=x,
        train_y=labels,
        build=partial(build_model, "resnet20", num_classes=10),
        loss=F.cross_entropy,
        lrs={
            "sgd": 0.1, "eva": 0.1, "kfac": 0.1, "shampoo": 0.1, "eva_s": 0.1, "foof": 0.1,
            "eva_f": 0.1, "adagrad": 0.01, "adamw": 0.001, "mfac": 1e-4,
        },
        tuned=(),
    )  # fmt: skip


class TrainingRun:
    """One optimizer and seed, trained in stretches; records (step, seconds, loss) points."""

    def __init__(
        self,
        task: Task,
        label: str,
        seed: int,
        lr: float,
        args: argparse.Namespace,
        device: torch.device,
    ) -> None:
        self.task, self.label, self.seed, self.args, self.device = task, label, seed, args, device
        torch.manual_seed(seed)
        self.contender = build_contender(label, task.build().to(device), args.mfac_grads, lr=lr)
        self.order = torch.Generator().manual_seed(seed)
        self.batches: list[Tensor] = []
        self.step = 0
        self.seconds = 0.0
        self.diverged = False
        self.curve: list[tuple[int, float, float]] = [(0, 0.0, self.evaluate())]

    @torch.no_grad()
    def evaluate(self) -> float:
        """Training loss on the first ``eval_size`` training examples (eval mode)."""
        model = self.contender.model
        model.eval()
        total, n = 0.0, min(self.args.eval_size, len(self.task.train_x))
        for start in range(0, n, 1000):
            xb = self.task.train_x[start : min(n, start + 1000)].to(self.device)
            yb = self.task.train_y[start : min(n, start + 1000)].to(self.device)
            total += float(self.task.loss(model(xb), yb)) * len(xb)
        model.train()
        return total / n

    def _next_batch(self) -> tuple[Tensor, Tensor]:
        if not self.batches:
            n = len(self.task.train_x)
            perm = torch.randperm(n, generator=self.order)
            self.batches = list(perm[: n - n % self.args.batch].split(self.args.batch))[::-1]
        idx = self.batches.pop()
        return self.task.train_x[idx].to(self.device), self.task.train_y[idx].to(self.device)

    def train(self, max_steps: int, target: float | None = None) -> None:
        """Train until ``max_steps`` or an evaluated loss ≤ ``target`` (or a non-finite loss)."""
        if self.diverged or (target is not None and self.reached(target) is not None):
            return
        while self.step < max_steps:
            x, y = self._next_batch()
            synchronize(self.device)
            start = time.perf_counter()
            self.contender.step(x, y, self.task.loss)
            synchronize(self.device)
            self.seconds += time.perf_counter() - start
            self.step += 1
            if self.step % self.args.eval_every == 0 or self.step == max_steps:
                loss = self.evaluate()
                self.curve.append((self.step, self.seconds, loss))
                self.diverged = not math.isfinite(loss)
                if self.diverged or (target is not None and loss <= target):
                    return

    def reached(self, target: float) -> tuple[int, float] | None:
        """``(steps, seconds)`` of the first evaluation at or below ``target``."""
        for step, seconds, loss in self.curve:
            if loss <= target:
                return step, seconds
        return None


def ttt_parser() -> argparse.ArgumentParser:
    """Options of the time-to-target sub-command."""
    parser = argparse.ArgumentParser(
        prog="python scripts/bench.py time-to-target",
        description=(
            "Steps and seconds each optimizer needs to reach the training loss SGD reaches "
            "after --target-epochs epochs (median over seeds; paper Fig. 5 style)."
        ),
    )
    parser.add_argument(
        "--task", choices=("mnist-autoencoder", "cifar10-resnet20"), default="mnist-autoencoder"
    )
    parser.add_argument(
        "--optimizers",
        type=_label_list,
        default=None,
        help="comma-separated (default sgd,kfac@10,shampoo@10,eva: Fig. 5's)",
    )
    parser.add_argument("--seeds", type=_positive_int, default=None, help="seeds (default 3)")
    parser.add_argument(
        "--target-epochs",
        type=_positive_int,
        default=None,
        help="SGD's epochs that define the target (default 10 MNIST, 2 CIFAR)",
    )
    parser.add_argument(
        "--max-epochs",
        type=_positive_int,
        default=None,
        help="budget of every optimizer (default 2 × target epochs)",
    )
    parser.add_argument(
        "--train-size",
        type=_positive_int,
        default=None,
        help="training examples (default 20000 MNIST, 10000 CIFAR)",
    )
    parser.add_argument(
        "--batch",
        type=_positive_int,
        default=None,
        help="batch size (default 1000 MNIST, 128 CIFAR)",
    )
    parser.add_argument(
        "--eval-every",
        type=_positive_int,
        default=None,
        help="evaluate the training loss every this many steps (default 5)",
    )
    parser.add_argument(
        "--eval-size",
        type=_positive_int,
        default=None,
        help="training examples the loss is evaluated on (default 5000)",
    )
    parser.add_argument(
        "--lr",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="learning rate of one optimizer, e.g. --lr eva_f=0.05 (repeatable)",
    )
    parser.add_argument("--mfac-grads", type=_positive_int, default=32)
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="CIFAR-10 JPEG folder (default $EVA_DATA/cifar10-images)",
    )
    parser.add_argument(
        "--tarball",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "data" / "cifar10-images.tar.gz",
        help="CIFAR-10 JPEG tarball, unpacked into --data-root when missing",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=_positive_int, default=None)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench")
    parser.add_argument(
        "--name", default=None, help="output file stem (default ttt-<task>-<device>)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny smoke run (1 seed, 2000 images, sgd and eva)"
    )
    return parser


def run_time_to_target(argv: Sequence[str]) -> dict[str, Any] | None:
    """The time-to-target benchmark; returns the record it writes (None when skipped)."""
    args = ttt_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    mnist = args.task == "mnist-autoencoder"
    q = args.quick

    def pick(value: Any, normal: Any, small: Any) -> Any:
        return value if value is not None else (small if q else normal)

    args.optimizers = pick(args.optimizers, ["sgd", "kfac@10", "shampoo@10", "eva"], ["sgd", "eva"])
    if "sgd" not in args.optimizers:
        args.optimizers = ["sgd", *args.optimizers]
    args.seeds = pick(args.seeds, 3, 1)
    args.target_epochs = pick(args.target_epochs, 10 if mnist else 2, 1)
    args.max_epochs = pick(args.max_epochs, 2 * args.target_epochs, 2 * args.target_epochs)
    args.train_size = pick(args.train_size, 20_000 if mnist else 10_000, 2000)
    args.batch = pick(args.batch, 1000 if mnist else 128, 500)
    args.eval_every = pick(args.eval_every, 5, 2)
    args.eval_size = pick(args.eval_size, 5000, 1000)
    args.name = args.name or f"ttt-{args.task}-{device_tag(device)}"
    if args.max_epochs < args.target_epochs:
        raise SystemExit("bench.py time-to-target: error: --max-epochs must be >= --target-epochs")
    overrides = {}
    for item in args.lr:
        name, _, value = item.partition("=")
        try:
            overrides[name.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"bench.py time-to-target: error: --lr {item!r}: NAME=VALUE") from None

    if mnist:
        task = mnist_task(args.train_size)
    else:
        if not args.tarball.is_file() and (args.data_root is None or not args.data_root.exists()):
            log(
                f"time-to-target {args.task}: skipped — no CIFAR-10 JPEGs (looked for the tarball "
                f"{args.tarball} and the folder {args.data_root or '$EVA_DATA/cifar10-images'}); "
                "pass --tarball cifar10-images.tar.gz or --data-root <folder with train/ test/>"
            )
            return None
        task = cifar_task(args.train_size, args.data_root, args.tarball)
    steps_per_epoch = len(task.train_x) // args.batch
    target_steps = args.target_epochs * steps_per_epoch
    max_steps = args.max_epochs * steps_per_epoch
    seeds = list(range(args.seeds))

    def lr_of(label: str) -> float:
        base = parse_label(label)[0]
        return overrides.get(label, overrides.get(base, task.lrs.get(base, task.lrs["sgd"])))

    started = time.perf_counter()
    log(
        f"{task.description}: batch {args.batch}, {steps_per_epoch} steps/epoch; target from SGD "
        f"after {args.target_epochs} epochs; budget {args.max_epochs} epochs; seeds {seeds}"
    )
    runs: dict[str, list[TrainingRun]] = {}
    runs["sgd"] = [TrainingRun(task, "sgd", s, lr_of("sgd"), args, device) for s in seeds]
    for run in runs["sgd"]:
        run.train(target_steps)
        log(f"[sgd seed {run.seed}] loss {run.curve[-1][2]:.4f} after {run.step} steps")
    target = statistics.median(run.curve[-1][2] for run in runs["sgd"])
    if not math.isfinite(target):
        raise SystemExit(f"bench.py time-to-target: SGD diverged (loss {target}); lower its --lr")
    log(f"target training loss: {target:.4f}")
    for run in runs["sgd"]:
        run.train(max_steps, target)
    for label in args.optimizers:
        if label == "sgd":
            continue
        runs[label] = []
        for s in seeds:
            run = TrainingRun(task, label, s, lr_of(label), args, device)
            run.train(max_steps, target)
            runs[label].append(run)
            hit = run.reached(target)
            log(
                f"[{label} seed {s}] "
                + (f"reached in {hit[0]} steps, {hit[1]:.1f} s" if hit else "did not reach")
                + f" (loss {run.curve[-1][2]:.4f} at step {run.step})"
            )

    results: dict[str, Any] = {}
    for label, group in runs.items():
        hits = [run.reached(target) for run in group]
        steps = [h[0] if h else math.inf for h in hits]
        secs = [h[1] if h else math.inf for h in hits]
        med_steps, med_secs = statistics.median(steps), statistics.median(secs)
        results[label] = {
            "lr": lr_of(label),
            "lr_tuned": parse_label(label)[0] in task.tuned,
            "hparams": group[0].contender.hparams,
            "seeds": seeds,
            "steps_to_target": [None if math.isinf(s) else s for s in steps],
            "seconds_to_target": [None if math.isinf(s) else s for s in secs],
            "median_steps": None if math.isinf(med_steps) else med_steps,
            "median_seconds": None if math.isinf(med_secs) else med_secs,
            "reached": sum(h is not None for h in hits),
            "ms_per_step": 1e3 * sum(r.seconds for r in group) / max(1, sum(r.step for r in group)),
            "median_final_loss": statistics.median(r.curve[-1][2] for r in group),
            "curves": [r.curve for r in group],
        }
    sgd_secs = results["sgd"]["median_seconds"]
    for res in results.values():
        secs = res["median_seconds"]
        res["seconds_ratio"] = secs / sgd_secs if secs is not None and sgd_secs else None

    untuned = [label for label in results if not results[label]["lr_tuned"]]
    record = {
        "kind": "time-to-target",
        "command": command_line(["time-to-target", *argv]),
        "date": now(),
        "machine": machine_description(device),
        "task": {"name": task.name, "description": task.description,
                 "loss": task.loss_description},
        "config": {
            "optimizers": args.optimizers, "seeds": seeds, "target_epochs": args.target_epochs,
            "max_epochs": args.max_epochs, "train_size": len(task.train_x), "batch": args.batch,
            "eval_every": args.eval_every, "eval_size": min(args.eval_size, len(task.train_x)),
            "mfac_grads": args.mfac_grads, "lr_schedule": "constant",
        },
        "target": target,
        "target_steps": target_steps,
        "max_steps": max_steps,
        "results": results,
        "notes": [
            "seconds count only the training steps (evaluation excluded); 'time ×SGD' is the "
            "median seconds divided by SGD's",
            "learning rates not tuned for this task: " + ", ".join(untuned)
            if untuned else "all learning rates tuned",
        ],
        "wall_seconds": time.perf_counter() - started,
    }  # fmt: skip
    if not mnist:
        record["notes"].append(
            "CIFAR-10 here is the JPEG re-encoded copy (quality 75): losses can differ slightly "
            "from the original images"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = write_outputs(record, args.out, args.name)
    print()
    print(md_path.read_text(encoding="utf-8"))
    log(f"wrote {json_path} and {md_path} ({record['wall_seconds']:.0f} s in all)")
    return record


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Dispatch: ``time-to-target``, the internal ``_peak-memory``, else the step-time benchmark."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "time-to-target":
        return run_time_to_target(argv[1:])
    if argv and argv[0] == "_peak-memory":
        _peak_memory_child(argv[1:])
        return None
    return run_step_time(argv)


if __name__ == "__main__":
    main()

"""The benchmark's command line: ``python -m scripts.bench [SUB-COMMAND] [OPTIONS]``.

Step time (no sub-command; ``make bench``)::

    python -m scripts.bench --models resnet110,vgg19 --batch 128 --steps 20 --warmup 3 \\
        --optimizers sgd,adagrad,adamw,kfac@1,kfac@10,foof,shampoo@1,shampoo@10,mfac,eva,eva_f,eva_s

An experiment preset's own runs (e.g. the language model's settings)::

    python -m scripts.bench --experiment lm --setting optimizer=adamw \\
        --setting optimizer=eva,optimizer.weight_decay=0.0005 --out results/bench --name x

Sub-commands: ``inverse`` (factor-inverse timings, :mod:`.inverse`), ``report RECORD.json...``
(re-render the markdown). Outputs ``<out>/<name>.json`` (every number, the command, versions,
machine, date) and ``<out>/<name>.md``. ``--quick`` runs a tiny configuration in seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from harness.machine import device_tag, machine_description
from harness.records import atomic_write_text, git_commit
from models.registry import MODELS
from scripts.bench import inverse, report
from scripts.bench.contenders import is_first_order, parse_label
from scripts.bench.memory import peak_memory_child
from scripts.bench.step_time import benchmark_experiment, benchmark_model, log
from scripts.bench.workloads import experiment_runs, workload

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OPTIMIZERS = (
    "sgd,adagrad,adamw,kfac@1,kfac@10,foof,shampoo@1,shampoo@10,mfac,eva,eva_f,eva_s"
)
DEFAULT_MODELS = "resnet110,vgg19,wrn28_10,resnet50,inception_v4,vit_b16"
DEFINITIONS = {
    "baseline": "--experiment: the setting an algorithm is compared with (the first first-order "
    "setting with the same base optimizer); otherwise SGD, named 'SGD' below",
    "time_ratio_median": "median step time / SGD's median step time",
    "time_ratio_mean": "mean step time (refresh spikes included) / SGD's mean",
    "time_ratio_paired": "median over rounds of step time / SGD's step time in the same round",
    "cpu_time_ratio_median": "median process CPU time per step (all threads, time.process_time) "
    "/ SGD's: less sensitive to being descheduled by other processes",
    "state_ratio": "(params + grads + optimizer state + preconditioner state bytes) / SGD's",
    "peak_memory.ratio": "rss: resident-set high-water mark of a fresh, warmed-up process "
    "running the algorithm alone, minus its resident memory before the model was built, / "
    "SGD's; cuda: max_memory_allocated of the algorithm alone, / SGD's",
    "comm.ratio": "statistics bytes all-reduced per step (bytes per refresh / update interval) / "
    "bytes of all trainable gradients",
}


def _labels(text: str) -> list[str]:
    labels = [s.strip().lower() for s in text.split(",") if s.strip()]
    if not labels:
        raise argparse.ArgumentTypeError("give at least one optimizer")
    for label in labels:
        try:
            parse_label(label)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return list(dict.fromkeys(labels))


def _models(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {unknown}; choose from {', '.join(sorted(MODELS))}"
        )
    return list(dict.fromkeys(names))


def _int_at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text}")
        return value

    return parse


def _usage_error(message: str) -> None:
    """Exit with status 2 and one line, as argparse does for a bad option."""
    print(f"python -m scripts.bench: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def step_time_parser() -> argparse.ArgumentParser:
    """Options of the step-time benchmark (no sub-command)."""
    positive, nonnegative = _int_at_least(1), _int_at_least(0)
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench",
        description="Step time, memory and communication of optimizers relative to SGD (paper "
        "Tables 5, 8 and 10) and where their time goes. Sub-commands: 'inverse' (factor-inverse "
        "timings), 'report RECORD.json...' (re-render markdown).",
    )
    add = p.add_argument
    add(
        "--models",
        type=_models,
        help=f"comma-separated (default {DEFAULT_MODELS}; --quick: resnet20)",
    )
    add(
        "--optimizers",
        type=_labels,
        help="comma-separated names of conf/optimizer; name@N sets "
        f"update_interval=N (default {DEFAULT_OPTIMIZERS}); sgd is always added as the baseline",
    )
    add(
        "--experiment",
        help="time an experiment preset's own runs (its model, data and loss), "
        "one per --setting, instead of --models; overrides every setting shares may follow "
        "after commas, e.g. lm,scale=smoke",
    )
    add(
        "--setting",
        action="append",
        default=[],
        help="with --experiment: comma-separated "
        "train.py overrides of one setting (repeatable), e.g. optimizer=eva_adamw",
    )
    add("--batch", type=positive, help="batch size of CIFAR models (default 128; --quick: 4)")
    add(
        "--imagenet-batch",
        type=positive,
        help="batch size of ImageNet models (default 8 on CPU, 32 on CUDA)",
    )
    add("--image-size", type=positive, help="side of CIFAR-model inputs (default 32; --quick: 16)")
    add("--steps", type=positive, help="timed steps per algorithm (default 20; --quick: 2)")
    add("--warmup", type=nonnegative, help="untimed warm-up steps (default 3; --quick: 1)")
    add("--batches", type=positive, default=10, help="distinct batches, cycled (default 10)")
    add(
        "--mfac-grads",
        type=positive,
        help="M-FAC num_grads (default 32 on CPU, 1024 on CUDA; --quick: 4)",
    )
    add(
        "--mfac-max-fraction",
        type=float,
        default=0.25,
        help="skip M-FAC when its windows need "
        "more than this fraction of the device's memory (default 0.25)",
    )
    add(
        "--peak-memory",
        choices=("auto", "rss", "cuda", "none"),
        help="peak memory of each "
        "algorithm alone: cuda max_memory_allocated, or the peak RSS of a fresh subprocess on "
        "CPU (default auto; --quick and --experiment: none; --experiment: rss or none)",
    )
    add("--peak-steps", type=positive, default=2, help="steps run for the peak memory (default 2)")
    add(
        "--profile-models",
        help="models to profile phase by phase ('' for none; default "
        "resnet110 when benchmarked, else the first model)",
    )
    add(
        "--profile-optimizers",
        type=_labels,
        help="algorithms to profile (default eva,eva_f,eva_s; --quick: eva)",
    )
    add("--profile-steps", type=positive, help="profiled steps (default 10; --quick: 1)")
    add(
        "--torch-profiler",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also save the torch.profiler table of the profiled steps",
    )
    add("--device", help="cpu or cuda[:i] (default cuda when available)")
    add("--threads", type=positive, help="torch intra-op threads (default torch's)")
    add("--seed", type=int, default=0, help="seed of weights and batches")
    add(
        "--out",
        type=Path,
        default=REPO_ROOT / "results" / "bench",
        help="output folder (default results/bench)",
    )
    add(
        "--name",
        help="output file stem; {device} is replaced by the device tag "
        "(default steptime-{device}, e.g. steptime-cpu)",
    )
    add(
        "--quick",
        action="store_true",
        help="tiny smoke run: resnet20, batch 4, 1+2 steps, no peak memory",
    )
    return p  # fmt: skip


def resolve(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill the defaults that depend on ``--quick``, ``--experiment`` and the device.

    Raises:
        SystemExit: inconsistent options (status 2, one line).
    """
    cuda, quick = device.type == "cuda", args.quick

    def pick(value: Any, normal: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else normal)

    if bool(args.experiment) != bool(args.setting):
        _usage_error("--experiment and --setting go together")
    if args.experiment and args.models:
        _usage_error("give --models or --experiment, not both")
    args.models = (
        [] if args.experiment else pick(args.models, DEFAULT_MODELS.split(","), ["resnet20"])
    )
    args.optimizers = pick(
        args.optimizers, DEFAULT_OPTIMIZERS.split(","), DEFAULT_OPTIMIZERS.split(",")
    )
    if args.experiment:
        args.optimizers = []  # the settings are the contenders
    elif "sgd" not in args.optimizers:
        args.optimizers = ["sgd", *args.optimizers]
    args.batch, args.image_size = pick(args.batch, 128, 4), pick(args.image_size, 32, 16)
    args.imagenet_batch = pick(args.imagenet_batch, 32 if cuda else 8, 2)
    args.steps, args.warmup = pick(args.steps, 20, 2), pick(args.warmup, 3, 1)
    args.mfac_grads = pick(args.mfac_grads, 1024 if cuda else 32, 4)
    peak = pick(args.peak_memory, "none" if args.experiment else "auto", "none")
    args.peak_memory = ("cuda" if cuda else "rss") if peak == "auto" else peak
    if args.peak_memory == "cuda" and not cuda:
        _usage_error("--peak-memory cuda needs a CUDA device")
    if args.peak_memory == "cuda" and args.experiment:
        _usage_error("--experiment measures peak memory with rss only (a subprocess on the CPU)")
    if args.profile_models is None:
        args.profile_models = ["resnet110"] if "resnet110" in args.models else args.models[:1]
    else:
        args.profile_models = [m.strip() for m in args.profile_models.split(",") if m.strip()]
    default_profile = ["eva"] if quick else ["eva", "eva_f", "eva_s"]
    args.profile_optimizers = [
        o
        for o in pick(args.profile_optimizers, default_profile, default_profile)
        if o in args.optimizers and not is_first_order(parse_label(o)[0])
    ]
    args.profile_steps = pick(args.profile_steps, 10, 1)
    args.name = (args.name or "steptime-{device}").replace("{device}", device_tag(device))
    return args  # fmt: skip


def run_step_time(argv: Sequence[str]) -> dict[str, Any]:
    """The step-time benchmark: writes ``<out>/<name>.json`` and ``.md``; returns the record."""
    args = step_time_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    args = resolve(args, device)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    config = {k: v for k, v in vars(args).items() if k not in ("out", "name", "quick", "device")}
    config |= {
        "peak_memory": None if args.peak_memory == "none" else args.peak_memory,
        "batches": min(args.batches, args.warmup + args.steps),
        "order": "round robin, starting position rotating by one every round",
        "data": "a pool of random batches (inputs N(0,1), random labels); round r gives every "
        "algorithm batch r mod pool size"
        if not args.experiment
        else "the experiment's first "
        "training batches; round r gives every setting batch r mod pool size",
        "reducer": "CountingReducer (world_size 1: records bytes, averages nothing)",
    }
    record: dict[str, Any] = {
        "kind": "step-time",
        "command": shlex.join(["python", "-m", "scripts.bench", *argv]),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_description(device) | {"git_commit": git_commit(REPO_ROOT)},
        "config": config,
        "definitions": DEFINITIONS,
        "models": {},
    }
    json_path, md_path = args.out / f"{args.name}.json", args.out / f"{args.name}.md"

    def write() -> None:  # after every model: partial results survive an interruption
        record["wall_seconds"] = time.perf_counter() - started
        atomic_write_text(json_path, json.dumps(record, indent=1, allow_nan=True) + "\n")
        atomic_write_text(md_path, report.render(record))

    if args.experiment:
        work = experiment_runs(args.experiment, args.setting, args.batches)
        record["models"][work.model] = benchmark_experiment(work, args)
        write()
    for model in args.models:
        work = workload(model, args.batch, args.imagenet_batch, args.image_size)
        record["models"][model] = benchmark_model(work, args.optimizers, args, device)
        write()
    print()
    print(md_path.read_text(encoding="utf-8"))
    log(f"wrote {json_path} and {md_path} ({record['wall_seconds']:.0f} s in all)")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``inverse``, ``report``, the internal ``_peak-memory``, else step time.

    Returns:
        The exit status: 0, or 1 when an algorithm's step failed (its record is written).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "inverse":
        return inverse.main(argv[1:])
    if argv and argv[0] == "report":
        return report.rerender([Path(a) for a in argv[1:]])
    if argv and argv[0] == "_peak-memory":
        return peak_memory_child(argv[1:])
    record = run_step_time(argv)
    failed = [label for entry in record["models"].values() for label in entry["failed"]]
    if failed:
        print(f"python -m scripts.bench: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0

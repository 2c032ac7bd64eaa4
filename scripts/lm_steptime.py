"""Step time of language-model settings, measured alone in one process (the ``lm`` target).

    python scripts/lm_steptime.py --experiment lm --setting optimizer=adamw \\
        --setting optimizer=eva,optimizer.weight_decay=0.0005 --out results/bench --name x

Each ``--setting`` is a comma-separated list of ``train.py`` overrides (a tuned setting's label,
:attr:`scripts.repro.grids.Tuned.label`), composed on top of ``experiment=<experiment>``, and is
built exactly as ``train.py`` builds it (``train.build_run``: the model, the optimizer and the
preconditioner of the run, the output head left first-order). All settings take the same
batches (the first setting's first ``--batches`` training batches) and are stepped in turn,
round robin (``scripts/bench.py``'s :func:`time_round_robin`), so that the machine's load hits
them alike; a step is zero_grad + forward + backward + preconditioner + optimizer (no schedule).

Writes ``<out>/<name>.json``: per setting (``models.gpt.algorithms[<setting>].time_ms``) the
median, mean (the mean includes the refreshes of interval methods such as K-FAC and Shampoo)
and every step's milliseconds; settings whose step raised are listed under ``failed``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

import train  # noqa: E402
from harness.distributed import Workers, resolve_device  # noqa: E402
from harness.records import atomic_write_text  # noqa: E402
from scripts.bench import (  # noqa: E402
    Contender,
    machine_description,
    now,
    summarize_times,
    time_round_robin,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="experiment preset, e.g. lm")
    parser.add_argument(
        "--setting",
        action="append",
        required=True,
        help="comma-separated overrides of one setting (repeatable), e.g. optimizer=eva_adamw",
    )
    parser.add_argument("--steps", type=int, default=30, help="timed rounds (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first (default 5)")
    parser.add_argument("--batches", type=int, default=4, help="distinct batches (default 4)")
    parser.add_argument("--out", type=Path, required=True, help="folder of the JSON record")
    parser.add_argument("--name", required=True, help="the record's stem")
    args = parser.parse_args(argv)
    if min(args.steps, args.batches) < 1 or args.warmup < 0:
        parser.error("--steps and --batches must be >= 1, --warmup >= 0")
    return args


def build(experiment: str, setting: str) -> train.Run:
    """The run ``train.py experiment=<experiment> <setting>`` would train (no record, no W&B)."""
    overrides = [f"experiment={experiment}", *setting.split(","), "logger.wandb=false"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    device = resolve_device(cfg.trainer.device)
    return train.build_run(cfg, Workers(0, 1, 0, device))


def measure(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Time every setting; returns the record."""
    runs = {setting: build(args.experiment, setting) for setting in args.setting}
    first = next(iter(runs.values()))
    device = first.workers.device
    batches = [
        (x.to(device), y.to(device)) for x, y in itertools.islice(first.data.train, args.batches)
    ]
    contenders = {
        label: Contender(label, run.model, run.optimizer, run.preconditioner, None, {})
        for label, run in runs.items()
    }
    failed = time_round_robin(
        contenders, batches, first.loss, args.steps, args.warmup, device, "lm"
    )
    algorithms = {
        label: {"time_ms": summarize_times(c.times)}
        for label, c in contenders.items()
        if label not in failed
    }
    return {
        "command": shlex.join(["python", "scripts/lm_steptime.py", *argv]),
        "date": now(),
        "machine": machine_description(device),
        "experiment": args.experiment,
        "steps": args.steps,
        "warmup": args.warmup,
        "models": {"gpt": {"batch": int(batches[0][0].shape[0]), "algorithms": algorithms}},
        "failed": failed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    record = measure(args, argv)
    path = args.out / f"{args.name}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    times = record["models"]["gpt"]["algorithms"]
    for label, entry in times.items():
        ms = entry["time_ms"]
        print(f"{label}: median {ms['median']:.1f} ms, mean {ms['mean']:.1f} ms")
    print(f"wrote {path}")
    return 1 if record["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

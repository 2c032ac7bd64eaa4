"""Regenerate the paper's tables and figures: run what is missing, then render from records.

    python -m scripts.reproduce table4 --scale cpu        # or: make table4 SCALE=cpu
    python -m scripts.reproduce fig4 fig7 --scale smoke
    python -m scripts.reproduce lm --scale cpu            # or: make lm (results/lm/)
    python -m scripts.reproduce table4 --scale paper --dry-run          # print the commands
    python -m scripts.reproduce table4 --scale paper -o hydra/launcher=slurm_8x4
    python -m scripts.reproduce table4 table9 fig3 fig5 fig8 --scale cpu --jobs 12  # one big GPU

Records go to ``<results>/runs/<scale>/``, benchmark records to ``<results>/bench/``, renders
(Markdown, LaTeX, PNG, PDF) to ``<results>/<scale>/`` (the language-model comparison ``lm``, not a
paper artifact: to ``<results>/lm/`` at SCALE=cpu, ``<results>/lm/paper/`` at SCALE=paper).
With complete records a target only re-renders; ``--force`` reruns it. What each target runs at
each scale: ``scripts/repro/grids.py``, ``figure_grids.py`` and ``bench_grid.py`` (the paper's),
``lm_grid.py`` (``lm``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.repro.pool import stop_on_sigterm
from scripts.repro.run import Layout, run_targets
from scripts.repro.sweeps import SCALES
from scripts.repro.targets import TARGETS, target


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", help=f"any of: {', '.join(TARGETS)}, or 'all'")
    parser.add_argument("--scale", default="cpu", help=f"{' | '.join(SCALES)} (default cpu)")
    parser.add_argument("--results", default="results", help="results folder (default results)")
    parser.add_argument("--force", action="store_true", help="rerun even finished runs")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument(
        "--render-only", action="store_true", help="render what exists, run nothing"
    )
    parser.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        help="extra train.py override for every sweep (repeatable), e.g. hydra/launcher=slurm_8x4",
    )
    parser.add_argument("--nproc", type=int, default=1, help="torchrun workers per run (default 1)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs side by side, each its own process (default 1: one Hydra multirun per sweep, "
        "sweeps that differ in one value joined)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds after which nothing new starts and running runs are stopped (their "
        "checkpoints stay; the next call resumes them); runs each run as its own process, "
        "every setting's first seed before any second seed",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run just the runs whose directory name matches this fnmatch pattern (repeatable), "
        "e.g. '*optimizer=kfac,seed=1'; runs each run as its own process",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()  # runs started side by side (--jobs) stop with us
    names = list(TARGETS) if args.targets == ["all"] else args.targets
    try:
        targets = [target(name, args.scale) for name in names]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.nproc < 1:
        print(f"error: --nproc must be >= 1, got {args.nproc}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print(f"error: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    if args.time_limit is not None and args.time_limit <= 0:
        print(f"error: --time-limit must be > 0 seconds, got {args.time_limit}", file=sys.stderr)
        return 2
    layout = Layout(Path(args.results), args.scale)
    notes: dict[str, list[str]] = {}
    status = 0
    if not args.render_only:
        try:
            notes = run_targets(
                targets,
                layout,
                force=args.force,
                dry_run=args.dry_run,
                extra=args.override,
                nproc=args.nproc,
                jobs=args.jobs,
                time_limit=args.time_limit,
                only=args.only,
            )
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
    if args.dry_run:
        return status
    from scripts.repro.render import render  # matplotlib: only once there is something to draw

    for tgt in targets:
        for path in render(tgt, layout, notes.get(tgt.name, [])):
            print(f"wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())

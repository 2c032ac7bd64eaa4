"""Paper tables and figures (scripts/reproduce.py): grids, rendering, and SCALE=smoke end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from harness.pipeline import subset
from harness.records import RunRecord
from scripts.repro import records as repro_records
from scripts.repro import run as repro_run
from scripts.repro.grids import SCALES, TARGETS, Sweep, fmt, run_dirname, target
from scripts.repro.render import render
from scripts.repro.run import EXCLUDE_KEYS, Layout, pending
from scripts.repro.tuning import chosen_lr
from tests.repository import ROOT

PAPER = ROOT.parent / "shared" / "paper" / "eva-paper.txt"


def fabricate(
    layout: Layout, sweep: Sweep, run: dict[str, str], summary: dict, curve=(), config=None
) -> Path:
    """A completed run's record, as train.py writes it, with chosen numbers (``config``: the
    run's overrides to write into its config, e.g. ``optimizer.lr``)."""
    record = RunRecord(layout.run_dir(sweep, run))
    optimizer: dict = {"name": run.get("optimizer", "kfac")}
    if optimizer["name"] in ("kfac", "shampoo"):
        optimizer["update_interval"] = int(run.get("optimizer.update_interval", 10))
    tree: dict = {"optimizer": optimizer}
    for key, value in (config or {}).items():
        if key in ("optimizer", "model", "dataset"):
            tree.setdefault(key, {})["name"] = value
            continue
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    record.start(tree, "fabricated", False)
    for row in curve:
        record.log_epoch(row)
    record.finish("completed", summary=summary)
    return record.dir


# ------------------------------------------------------------------------------------ grids


@pytest.mark.parametrize("scale", SCALES)
def test_every_run_composes_into_its_preset_group(scale, compose):
    """Each grid run is a valid train.py config; its folder is <group = preset name>/<dirname>."""
    for name in TARGETS:
        tgt = target(name, scale)
        sweeps = [*tgt.sweeps, *(t.sweep() for t in tgt.tuned), *(t.final(0.1) for t in tgt.tuned)]
        for sweep in sweeps:
            for run in sweep.runs()[:2]:
                overrides = [
                    f"experiment={sweep.experiment}",
                    *(f"{k}={v}" for k, v in run.items()),
                ]
                cfg = compose(overrides, hydra=True)
                assert cfg.group == sweep.experiment, (name, sweep.experiment)
                choices = cfg.hydra.runtime.choices
                for key, value in run.items():
                    got = choices[key] if key in choices else OmegaConf.select(cfg, key)
                    got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
                    assert str(got).replace(" ", "") == value, (name, key, got, value)


def test_shared_runs_are_one_directory():
    """Runs that several SCALE=cpu targets need are one folder each: Table 9's Eva (seed 0, lr
    0.1) is a run of Table 4's lr sweep, Fig. 3's FOOF is Fig. 8's, Fig. 5's Shampoo is Fig. 8's."""
    layout = Layout(Path("r"), "cpu")

    def dirs(name: str) -> set[Path]:
        tgt = target(name, "cpu")
        sweeps = [*tgt.sweeps, *(t.sweep() for t in tgt.tuned)]
        return {layout.run_dir(s, r) for s in sweeps for r in s.runs()}

    shared = dirs("table9") & dirs("table4")
    assert [p.name for p in shared] == [
        "dataset=cifar10_images,model=resnet20,optimizer.lr=0.1,optimizer=eva,seed=0"
    ]
    assert {p.name.split(",")[-2] for p in dirs("fig3") & dirs("fig8")} == {"optimizer=foof"}
    assert len(dirs("fig3") & dirs("fig8")) == 2  # seeds 0 and 1
    assert {p.name.split(",")[-2] for p in dirs("fig5") & dirs("fig8")} == {"optimizer=shampoo"}
    assert dirs("table4") <= dirs("fig5")  # Fig. 5 plots Table 4's runs


def test_unknown_target_or_scale_is_one_line():
    for args in (["table11"], ["table4", "--scale", "huge"]):
        proc = subprocess.run(
            [sys.executable, "-m", "scripts.reproduce", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:")


def test_subset_is_fixed_and_keeps_autoencoder_identity():
    x, y = torch.arange(100.0).view(100, 1), torch.arange(100)
    a, b = subset((x, y), 10, "train_subset"), subset((x, y), 10, "train_subset")
    assert torch.equal(a[0], b[0]) and torch.equal(a[0].view(-1).long(), a[1])
    assert len(set(a[1].tolist())) == 10
    picked = subset((x, x), 5, "train_subset")
    assert picked[0] is picked[1]
    with pytest.raises(ValueError, match="train_subset"):
        subset((x, y), 101, "train_subset")


def test_paper_numbers_are_in_the_paper():
    """Every number of paper_numbers.csv's tables appears in the paper's text."""
    if not PAPER.exists():
        pytest.skip("the paper's text is not beside the repository")
    text = PAPER.read_text()
    rows = repro_records.paper_numbers("table4") + repro_records.paper_numbers("table9")
    rows += repro_records.paper_numbers("table7") + repro_records.paper_numbers("table8")
    assert len(rows) == 54 + 12 + 12 + 4
    for row in rows:
        assert row["value"] in text, row


# ------------------------------------------------------------------------- rendering records


def _fixed_overrides(tuned) -> dict[str, str]:
    return {k: fmt(v) for k, v in tuned.fixed.items()}


def test_table4_picks_each_settings_best_lr_then_runs_its_seeds(tmp_path):
    """Tuned rows: the final seeds wait for the whole lr sweep, a best rate on an edge adds one
    rate past it first, the final seeds run at the best lr (ties: the smaller), and the table
    shows the sweep, the choice (marked when still on an edge) and the verdicts against SGD."""
    layout = Layout(tmp_path, "cpu")
    tgt = target("table4", "cpu")
    assert [t.label for t in tgt.tuned] == [
        "optimizer=sgd",
        "optimizer=kfac",
        "optimizer=kfac,optimizer.stat_batch=16",
        "optimizer=eva",
        "optimizer=eva,optimizer.stat_batch=16",
    ]
    sweep_acc = {  # seed 0 at lr 0.05, 0.1, 0.2, then at the rate past the edge
        "optimizer=sgd": ((0.05, 0.80), (0.1, 0.82), (0.2, 0.81)),
        "optimizer=kfac": ((0.05, 0.83), (0.1, 0.83), (0.2, 0.80), (0.025, 0.82)),  # tie: 0.05
        "optimizer=kfac,optimizer.stat_batch=16": (
            (0.05, 0.80),
            (0.1, 0.81),
            (0.2, 0.84),
            (0.4, 0.83),
        ),
        "optimizer=eva": ((0.05, 0.85), (0.1, 0.84), (0.2, 0.83), (0.025, 0.86)),  # still edge
        "optimizer=eva,optimizer.stat_batch=16": (
            (0.05, 0.79),
            (0.1, 0.80),
            (0.2, 0.81),
            (0.4, 0.81),  # tie: 0.2
        ),
    }

    def fabricate_sweep(tuned, count):
        for lr, acc in sweep_acc[tuned.label][:count]:
            run = {**tuned.sweep((lr,)).runs()[0]}
            fabricate(layout, tuned.sweep((lr,)), run, {"test_acc": acc}, config=run)

    for tuned in tgt.tuned:
        fabricate_sweep(tuned, 2)
    assert chosen_lr(tgt.tuned[0], layout) is None  # lr 0.2 still missing
    notes = repro_run.run_targets([tgt], layout, dry_run=True)["table4"]
    assert sum("its lr sweep is unfinished" in n for n in notes) == 5
    for tuned in tgt.tuned:
        fabricate_sweep(tuned, 3)
    assert [chosen_lr(t, layout) for t in tgt.tuned] == [0.1, None, None, None, None]
    pending = repro_run.pending(tgt, layout)
    assert [s.axes["optimizer.lr"] for s in pending] == [
        (0.025, 0.05, 0.1, 0.2),
        (0.05, 0.1, 0.2, 0.4),
        (0.025, 0.05, 0.1, 0.2),
        (0.05, 0.1, 0.2, 0.4),
    ]
    for tuned in tgt.tuned:
        fabricate_sweep(tuned, 4)
    chosen = [chosen_lr(t, layout) for t in tgt.tuned]
    assert chosen == [0.1, 0.05, 0.2, 0.025, 0.2]  # one extension only: Eva's stays on its edge
    for tuned, lr in zip(tgt.tuned, chosen, strict=True):
        final = tuned.final(lr)
        assert [r["seed"] for r in final.runs()] == ["1", "2"]
        for run in final.runs():
            acc = dict(sweep_acc[tuned.label])[lr] + 0.01 * int(run["seed"])
            fabricate(layout, final, run, {"test_acc": acc}, config=run)
    assert not repro_run.pending(tgt, layout)
    md = render(tgt, layout)[0].read_text()
    assert "| lr 0.025 (seed 0) | lr 0.05 (seed 0) | lr 0.1 (seed 0) | lr 0.2 (seed 0) |" in md
    # SGD at 0.1: seeds 82, 83, 84 → 83.00 ± 1.00; Eva at 0.025: 86, 87, 88 → 87.00 ± 1.00
    assert "| SGD | — | 80.00 | 82.00 | 81.00 | — | 0.1 | 83.00 ± 1.00 | — |" in md
    row = "| Eva, whole-batch statistics | 86.00 | 85.00 | 84.00 | 83.00 | — |"
    assert row + " 0.025 (edge of sweep) | 87.00 ± 1.00 | +4.00 ± 0.82 (higher) |" in md
    row = "| K-FAC, 16-sample statistics | — | 80.00 | 81.00 | 84.00 | 83.00 | 0.2 |"
    assert row + " 85.00 ± 1.00 |" in md
    assert "With whole-batch statistics: Eva − SGD +4.00 ± 0.82 (higher)" in md
    assert "K-FAC − SGD +1.00 ± 0.82 (no difference)" in md
    assert "does not hold at this scale" in md
    # K-FAC: 16-sample 85 ± 1 vs whole-batch 84 ± 1; Eva: 16-sample 82 ± 1 vs whole-batch 87 ± 1
    assert "16-sample minus whole-batch statistics (each at its best lr): K-FAC +1.00 ± 0.82" in md
    assert "Eva -5.00 ± 0.82 (lower)." in md
    assert "Runs: 29 of 29 completed" in md


def test_missing_and_diverged_runs_are_said_so(tmp_path):
    layout = Layout(tmp_path, "cpu")
    tgt = target("table9", "cpu")
    sweep = tgt.sweeps[0]
    for run in sweep.runs():
        if run["optimizer"] == "eva_no_klclip":
            record = RunRecord(layout.run_dir(sweep, run))
            record.start({}, "x", False)
            record.finish("failed", error="Diverged: training loss is nan at step 3")
        elif run["optimizer"] != "eva_no_kv":
            fabricate(layout, sweep, run, {"test_acc": 0.5})
    assert {r.status for r in repro_records.load_runs(tgt, layout)} == {
        "completed",
        "diverged",
        "missing",
    }
    md = render(tgt, layout)[0].read_text()
    assert "| 50.00 ± 0.00 | 50.00 ± 0.00 | diverged | not run |" in md
    assert "Runs: 6 of 12 completed, 3 diverged" in md
    assert len(pending(tgt, layout)) == 1  # diverged runs are finished; the missing are not


def test_figures_render_png_pdf_and_time_to_target(tmp_path):
    layout = Layout(tmp_path, "cpu")
    tgt = target("fig6", "cpu")
    # accuracy per epoch and seconds per epoch; the target is the lowest final accuracy (71 %)
    curves = {
        "10": ([50, 65, 70, 72], 12.0),
        "eva": ([50, 70, 72, 73], 10.0),
        "1": ([55, 70, 71, 71], 30.0),
        "50": ([40, 60, 71, 74], 8.0),
    }
    for sweep in tgt.sweeps:
        for run in sweep.runs():
            key = "eva" if run["optimizer"] == "eva" else run.get("optimizer.update_interval", "10")
            accs, seconds = curves[key]
            rows = [
                {
                    "epoch": e + 1,
                    "test_acc": a / 100,
                    "train_loss": 2.0 - e / 4,
                    # a burst of other load in one epoch is not charged (median per epoch)
                    "train_seconds": 1000.0 if e == 0 and key == "1" else seconds,
                }
                for e, a in enumerate(accs)
            ]
            fabricate(layout, sweep, run, {"test_acc": accs[-1] / 100}, rows)
    written = render(tgt, layout)
    assert {p.suffix for p in written} == {".md", ".png", ".pdf"}
    assert all(p.stat().st_size > 1000 for p in written if p.suffix != ".md")
    md = written[0].read_text()
    assert (
        "target 71.00% (the lowest final accuracy): K-FAC@10 48 s (1.60× Eva), Eva 30 s "
        "(1.00× Eva), K-FAC@1 90 s (3.00× Eva), K-FAC@50 24 s (0.80× Eva)." in md
    )


def test_fig5_times_tuned_runs_by_their_benchmarked_step_time(tmp_path):
    """Fig. 5 with tuned settings: each at its chosen lr, seconds = steps × the benchmark's mean
    ms per step (16-sample rows timed as their method), target = the lowest final mean."""
    layout = Layout(tmp_path, "cpu")
    tgt = target("fig5", "cpu")
    curves = {  # test accuracy per epoch (3 epochs of 100 steps), the same for every seed
        "optimizer=sgd": [60, 70, 80],
        "optimizer=kfac": [65, 78, 82],
        "optimizer=kfac,optimizer.stat_batch=16": [62, 75, 81],
        "optimizer=eva": [70, 80, 83],
        "optimizer=eva,optimizer.stat_batch=16": [60, 72, 79],
    }

    def rows(accs):
        return [
            {"epoch": e + 1, "step": 100 * (e + 1), "test_acc": a / 100, "train_loss": 1.0}
            for e, a in enumerate(accs)
        ]

    for tuned in tgt.tuned:
        accs = curves[tuned.label]
        sweep = tuned.sweep()
        for run in sweep.runs():  # lr 0.1 is best: the others end 5 points lower
            end = accs[-1] - (0 if run["optimizer.lr"] == "0.1" else 5)
            fabricate(layout, sweep, run, {"test_acc": end / 100}, rows(accs), config=run)
        for run in tuned.final(0.1).runs():
            fabricate(
                layout, tuned.final(0.1), run, {"test_acc": accs[-1] / 100}, rows(accs), config=run
            )
    shampoo = tgt.sweeps[0]
    for run in shampoo.runs():
        fabricate(layout, shampoo, run, {"test_acc": 0.85}, rows([75, 82, 85]), config=run)
    times = {"sgd": 1000.0, "kfac@10": 2000.0, "eva": 1200.0, "shampoo@10": 3000.0}
    record = {
        "models": {
            "resnet20": {"algorithms": {k: {"time_ms": {"mean": v}} for k, v in times.items()}}
        }
    }
    layout.bench.mkdir(parents=True)
    (layout.bench / "steptime-cpu-resnet20.json").write_text(json.dumps(record))
    written = render(tgt, layout)
    md = written[0].read_text()
    assert "Target 79.00%: the lowest of the settings' final test accuracies" in md
    assert "SGD (lr 0.1): epoch 3, 300 s (1.25× Eva's) (3 seeds)" in md
    assert "K-FAC, whole-batch statistics (lr 0.1): epoch 3, 600 s (2.50× Eva's)" in md
    assert "Eva, whole-batch statistics (lr 0.1): epoch 2, 240 s (1.00× Eva's)" in md
    assert "Eva, 16-sample statistics (lr 0.1): epoch 3, 360 s (1.50× Eva's)" in md
    assert "Shampoo (lr 0.1): epoch 2, 600 s (2.50× Eva's) (2 seeds)" in md
    assert "Step times (mean ms, `steptime-cpu-resnet20`): sgd 1000, kfac@10 2000" in md


def test_table5_from_a_benchmark_record(tmp_path):
    layout = Layout(tmp_path, "cpu")
    algos = {
        key: {"time_ratio_median": t, "peak_memory": {"ratio": m}, "time_ms": {"median": 100 * t}}
        for key, t, m in [
            ("sgd", 1.0, 1.0),
            ("kfac@1", 2.5, 1.2),
            ("kfac@10", 1.2, 1.2),
            ("shampoo@1", 6.0, 1.1),
            ("shampoo@10", 1.5, 1.1),
            ("eva", 1.05, 1.0),
        ]
    }
    record = {
        "command": "bench",
        "machine": {"device_name": "CPU", "cpu": "x", "torch": "2"},
        "models": {"resnet110": {"batch": 128, "num_classes": 10, "algorithms": algos}},
    }
    layout.bench.mkdir(parents=True)
    (layout.bench / "steptime-cpu.json").write_text(json.dumps(record))
    md = render(target("table5", "cpu"), layout)[0].read_text()
    row = "| ResNet-110 | 128 | 6.00× (1.50×) | 1.10× | 2.50× (1.20×) | 1.20× | 1.05× | 1.00× |"
    assert row + " 6.79× (1.9×), mem 1× | 1.64× (1.16×), mem 1.03× | 1.16×, mem 1× |" in md
    assert "Eva is the fastest second-order method" in md


# ---------------------------------------------------------------------------- end to end


def test_smoke_scale_runs_and_renders_every_target(tmp_path):
    """SCALE=smoke: every target trains (or benchmarks) and renders; a rerun only re-renders."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "scripts.reproduce", "all", "--scale", "smoke"]
    command += ["--results", str(tmp_path), "-o", "logger.wandb=false"]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    layout = Layout(tmp_path, "smoke")
    for name in TARGETS:
        tgt = target(name, "smoke")
        assert not pending(tgt, layout), name
        assert (layout.renders / f"{name}.md").exists()
        assert (
            layout.renders / (f"{name}.tex" if name.startswith("table") else f"{name}.png")
        ).exists()
        assert "not run" not in (layout.renders / f"{name}.md").read_text().split("**What ran")[0]
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "$ python" not in again.stdout


def test_run_dirname_matches_hydra(tmp_path, cli, tiny):
    """A diverging job does not stop its sweep, and Hydra's folder is the predicted one."""
    sweep = Sweep("smoke_cifar", {"optimizer.lr": (1e12, 0.05)}, {"optimizer": "sgd"})
    args = ["-m", *sweep.overrides(), *tiny, f"out_root={tmp_path}", "skip_completed=true"]
    args += ["hydra.sweep.subdir=${hydra:job.override_dirname}"]
    args += [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(EXCLUDE_KEYS)}]"]
    proc = cli(args, ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tiny_keys = dict(k.split("=", 1) for k in tiny)
    tiny_keys = {k: v for k, v in tiny_keys.items() if k not in EXCLUDE_KEYS}
    statuses = []
    for run in sweep.runs():
        run_dir = tmp_path / "smoke_cifar" / run_dirname({**run, **tiny_keys})
        statuses.append(RunRecord(run_dir).data["status"])
    assert statuses == ["failed", "completed"]
    again = cli(args, ROOT)
    assert again.returncode == 0 and again.stdout.count("skip:") == 2


def test_missing_cifar_images_are_reported_not_run(tmp_path, monkeypatch, capsys):
    """Without the CIFAR-10 images a CPU-scale CIFAR target runs nothing and says why."""
    monkeypatch.setattr(repro_run, "cifar10_images_overrides", lambda: None)
    layout = Layout(tmp_path, "cpu")
    notes = repro_run.run_targets([target("table9", "cpu")], layout)["table9"]
    assert notes and "CIFAR-10 images not found" in notes[0]
    assert "$ python" not in capsys.readouterr().out
    md = render(target("table9", "cpu"), layout, notes)[0].read_text()
    assert "CIFAR-10 images not found" in md and "Runs: 0 of 12 completed" in md


def test_fig4_shows_each_optimizer_at_its_best_learning_rate(tmp_path):
    layout = Layout(tmp_path, "cpu")
    tgt = target("fig4", "cpu")
    sgd = next(
        s for s in tgt.sweeps if s.fixed == {"dataset": "mnist", "seed": 0, "optimizer": "sgd"}
    )
    high, low = sgd.runs()
    record = RunRecord(layout.run_dir(sgd, high))
    record.start({}, "x", False)
    record.finish("failed", error="Diverged: training loss is nan at step 9")
    rows = [{"epoch": 1, "train_loss": 150.0, "test_loss": 149.0, "train_seconds": 1.0}]
    fabricate(layout, sgd, low, {"train_loss": 150.0, "test_loss": 149.0}, rows)
    md = render(tgt, layout)[0].read_text()
    assert "- MNIST: final training loss, best first: SGD 150.00, " in md  # others: missing
    assert "; test loss: SGD 149.00, " in md
    assert (
        f"not shown (a better learning rate exists): SGD lr {high['optimizer.lr']} diverged" in md
    )


def test_paper_scale_dry_run_prints_torchrun_and_launcher_commands(tmp_path, capsys):
    """SCALE=paper through torchrun (--nproc) and a Hydra launcher (-o); --dry-run runs nothing."""
    layout = Layout(tmp_path, "paper")
    tgt = target("table4", "paper")
    repro_run.run_targets([tgt], layout, dry_run=True, extra=["hydra/launcher=slurm_8x4"], nproc=4)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert len(lines) == len(tgt.sweeps) == 6
    for line in lines:
        assert "-m torch.distributed.run --nproc_per_node=4" in line and "train.py -m" in line
        assert "hydra/launcher=slurm_8x4" in line and "optimizer=sgd,kfac,eva" in line
    assert not (tmp_path / "runs").exists()

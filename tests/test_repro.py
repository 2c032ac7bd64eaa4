"""Paper tables and figures (scripts/reproduce.py): grids, rendering, and SCALE=smoke end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from harness.pipeline import subset
from harness.records import RunRecord
from scripts.repro import records as repro_records
from scripts.repro.grids import SCALES, TARGETS, Sweep, run_dirname, target
from scripts.repro.render import render
from scripts.repro.run import EXCLUDE_KEYS, Layout, pending

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT.parent / "shared" / "paper" / "eva-paper.txt"


def fabricate(layout: Layout, sweep: Sweep, run: dict[str, str], summary: dict, curve=()) -> Path:
    """A completed run's record, as train.py writes it, with chosen numbers."""
    record = RunRecord(layout.run_dir(sweep, run))
    optimizer = {"name": run.get("optimizer", "kfac")}
    if optimizer["name"] in ("kfac", "shampoo"):
        optimizer["update_interval"] = int(run.get("optimizer.update_interval", 10))
    record.start({"optimizer": optimizer}, "fabricated", False)
    for row in curve:
        record.log_epoch(row)
    record.finish("completed", summary=summary)
    return record.dir


# ------------------------------------------------------------------------------------ grids


@pytest.mark.parametrize("scale", SCALES)
def test_every_run_composes_into_its_preset_group(scale, compose):
    """Each grid run is a valid train.py config; its folder is <group = preset name>/<dirname>."""
    for name in TARGETS:
        for sweep in target(name, scale).sweeps:
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
    """Table 9's and Fig. 7's Eva/SGD points at the default settings are Table 4's runs."""
    layout = Layout(Path("r"), "cpu")

    def dirs(name: str) -> set[Path]:
        tgt = target(name, "cpu")
        return {layout.run_dir(s, r) for s in tgt.sweeps for r in s.runs()}

    assert len(dirs("table9") & dirs("table4")) == 3  # Eva, 3 seeds, 4 epochs
    assert len(dirs("fig7") & dirs("table4")) == 3  # SGD, K-FAC, Eva at the defaults
    assert len(dirs("fig6") & dirs("fig5")) == 2  # K-FAC@10 and Eva


def test_unknown_target_or_scale_is_one_line():
    for args in (["table11"], ["table4", "--scale", "huge"]):
        proc = subprocess.run(
            [sys.executable, "scripts/reproduce.py", *args],
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


def test_table4_renders_cells_from_fabricated_records(tmp_path):
    layout = Layout(tmp_path, "cpu")
    tgt = target("table4", "cpu")
    acc = {"sgd": 0.50, "kfac": 0.60, "eva": 0.61}
    for sweep in tgt.sweeps:
        for run in sweep.runs():
            bump = 0.01 * int(run["seed"]) + 0.02 * int(run["trainer.epochs"])
            fabricate(layout, sweep, run, {"test_acc": acc[run["optimizer"]] + bump})
    md = render(tgt, layout)[0].read_text()
    # seeds 0, 1, 2 → +0, +1, +2 points: mean +1, sample std 1.00
    assert (
        "| ResNet-20 | CIFAR-10 (JPEG) | 2 (≙ 50) | 55.00 ± 1.00 | 65.00 ± 1.00 | 66.00 ± 1.00 |"
        in md
    )
    assert "| 8 (≙ 200) | 67.00 ± 1.00 |" in md
    assert "| 90.98 ± 0.6 | 93.03 ± 0.1 | 93.02 ± 0.3 | +11.00 | +1.00 |" in md  # paper ResNet-110
    assert "Eva > SGD in 3 of 3 settings; |Eva − K-FAC| ≤ 1 point in 3 of 3" in md
    assert "Runs: 27 of 27 completed" in md
    tex = (layout.renders / "table4.tex").read_text()
    assert r"55.00 $\pm$ 1.00" in tex and r"\begin{tabular}" in tex


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
    tgt = target("fig5", "cpu")
    # accuracy per epoch and seconds per epoch: Eva reaches SGD's final 70 % at epoch 2 (20 s)
    curves = {
        "sgd": ([40, 55, 65, 70], 8.0),
        "kfac": ([50, 65, 70, 72], 12.0),
        "shampoo": ([45, 60, 66, 71], 30.0),
        "eva": ([50, 70, 72, 73], 10.0),
    }
    for sweep in tgt.sweeps:
        for run in sweep.runs():
            accs, seconds = curves[run["optimizer"]]
            rows = [
                {
                    "epoch": e + 1,
                    "test_acc": a / 100,
                    "train_loss": 2.0 - e / 4,
                    # a burst of other load in one epoch is not charged (median per epoch)
                    "train_seconds": 1000.0 if e == 0 and run["optimizer"] == "sgd" else seconds,
                }
                for e, a in enumerate(accs)
            ]
            fabricate(layout, sweep, run, {"test_acc": accs[-1] / 100}, rows)
    written = render(tgt, layout)
    assert {p.suffix for p in written} == {".md", ".png", ".pdf"}
    assert all(p.stat().st_size > 1000 for p in written if p.suffix != ".md")
    md = written[0].read_text()
    assert (
        "target 70.00% (SGD's final accuracy): SGD 32 s (1.60× Eva), K-FAC@10 36 s (1.80× Eva), "
        in md
    )
    assert "Shampoo@10 120 s (6.00× Eva), Eva 20 s (1.00× Eva)" in md


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
    command = [sys.executable, "scripts/reproduce.py", "all", "--scale", "smoke"]
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
    from scripts.repro import run as repro_run

    monkeypatch.setattr(repro_run, "cifar10_images_overrides", lambda: None)
    layout = Layout(tmp_path, "cpu")
    notes = repro_run.run_target(target("table9", "cpu"), layout)
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
    from scripts.repro import run as repro_run

    layout = Layout(tmp_path, "paper")
    tgt = target("table4", "paper")
    repro_run.run_target(tgt, layout, dry_run=True, extra=["hydra/launcher=slurm_8x4"], nproc=4)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert len(lines) == len(tgt.sweeps) == 6
    for line in lines:
        assert "-m torch.distributed.run --nproc_per_node=4" in line and "train.py -m" in line
        assert "hydra/launcher=slurm_8x4" in line and "optimizer=sgd,kfac,eva" in line
    assert not (tmp_path / "runs").exists()

"""``scripts/repro/run.py``: which runs a target still needs (sweeps, then the tuned lr's seeds),
what is reported rather than run, and the commands of a dry run.
"""

from __future__ import annotations

from scripts.repro import run as repro_run
from scripts.repro.render import render
from scripts.repro.run import Layout
from scripts.repro.sweeps import merge_sweeps
from scripts.repro.targets import target
from scripts.repro.tuning import chosen_lr
from tests.scripts.repro.fabricate import fabricate


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
    long_acc = {  # 20 epochs, seeds 0-2 at the chosen lr (Eva-16: seed 0 only so far)
        "optimizer=sgd": (0.85, 0.86, 0.87),
        "optimizer=kfac": (0.86, 0.87, 0.88),
        "optimizer=kfac,optimizer.stat_batch=16": (0.84, 0.85, 0.86),
        "optimizer=eva": (0.85, 0.85, 0.85),
        "optimizer=eva,optimizer.stat_batch=16": (0.88,),
    }
    for tuned, lr in zip(tgt.tuned, chosen, strict=True):
        final, long = tuned.finals(lr)
        assert final == tuned.final(lr)
        assert [r["seed"] for r in final.runs()] == ["1", "2"]
        for run in final.runs():
            acc = dict(sweep_acc[tuned.label])[lr] + 0.01 * int(run["seed"])
            fabricate(layout, final, run, {"test_acc": acc}, config=run)
        assert long.fixed == tuned.fixed | {"optimizer.lr": lr, "trainer.epochs": 20}
        assert [r["seed"] for r in long.runs()] == ["0", "1", "2"]
        for run, acc in zip(long.runs(), long_acc[tuned.label], strict=False):
            fabricate(layout, long, run, {"test_acc": acc}, config=run)
    assert not repro_run.pending(tgt, layout)
    assert [s.fixed.get("trainer.epochs") for s in repro_run.final_sweeps(tgt, layout)[0]] == [
        None,
        20,
    ] * 5
    md = render(tgt, layout)[0].read_text()
    assert "| lr 0.025 (seed 0) | lr 0.05 (seed 0) | lr 0.1 (seed 0) | lr 0.2 (seed 0) |" in md
    # SGD at 0.1: seeds 82, 83, 84 → 83.00 ± 1.00; Eva at 0.025: 86, 87, 88 → 87.00 ± 1.00
    assert "| 20 epochs, test acc. (all seeds) | 20 epochs, − SGD |" in md
    row = "| SGD | — | 80.00 | 82.00 | 81.00 | — | 0.1 | 83.00 ± 1.00 | — |"
    assert row + " 86.00 ± 1.00 | — |" in md
    row = "| Eva, whole-batch statistics | 86.00 | 85.00 | 84.00 | 83.00 | — |"
    row += " 0.025 (edge of sweep) | 87.00 ± 1.00 | +4.00 ± 0.82 (higher) |"
    assert row + " 85.00 ± 0.00 | -1.00 ± 0.58 (no difference) |" in md
    row = "| K-FAC, 16-sample statistics | — | 80.00 | 81.00 | 84.00 | 83.00 | 0.2 |"
    assert row + " 85.00 ± 1.00 |" in md
    assert "| 88.00 (2/3 not run) | — |" in md  # Eva-16 at 20 epochs: one seed of three
    # at 20 epochs Eva 85 ± 0 and K-FAC 87 ± 1 against SGD 86 ± 1; Eva-16 has one seed only
    assert "At 20 epochs, with whole-batch statistics: Eva − SGD -1.00 ± 0.58" in md
    assert "At 20 epochs, with 16-sample" not in md  # not said on one seed
    row = "At 20 epochs, the statistics question, 16-sample minus whole-batch statistics"
    assert row + " (each at its best lr): K-FAC -2.00 ± 0.82 (lower)." in md
    assert "With whole-batch statistics: Eva − SGD +4.00 ± 0.82 (higher)" in md
    assert "K-FAC − SGD +1.00 ± 0.82 (no difference)" in md
    assert "does not hold at this scale" in md
    # K-FAC: 16-sample 85 ± 1 vs whole-batch 84 ± 1; Eva: 16-sample 82 ± 1 vs whole-batch 87 ± 1
    assert "16-sample minus whole-batch statistics (each at its best lr): K-FAC +1.00 ± 0.82" in md
    assert "Eva -5.00 ± 0.82 (lower)." in md
    assert "Runs: 42 of 44 completed" in md


def test_missing_cifar_images_are_reported_not_run(tmp_path, monkeypatch, capsys):
    """Without the CIFAR-10 images a CPU-scale CIFAR target runs nothing and says why."""
    monkeypatch.setattr(repro_run, "cifar10_images_overrides", lambda: None)
    layout = Layout(tmp_path, "cpu")
    notes = repro_run.run_targets([target("table9", "cpu")], layout)["table9"]
    assert notes and "CIFAR-10 images not found" in notes[0]
    assert "$ python" not in capsys.readouterr().out
    md = render(target("table9", "cpu"), layout, notes)[0].read_text()
    assert "CIFAR-10 images not found" in md and "Runs: 0 of 12 completed" in md


def test_paper_scale_dry_run_prints_torchrun_and_launcher_commands(tmp_path, capsys):
    """SCALE=paper through torchrun (--nproc) and a Hydra launcher (-o); --dry-run runs nothing."""
    layout = Layout(tmp_path, "paper")
    tgt = target("table4", "paper")
    repro_run.run_targets([tgt], layout, dry_run=True, extra=["hydra/launcher=slurm_8x4"], nproc=4)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    # 6 sweeps (a model on a dataset each); those on one dataset differ in the model only
    assert len(tgt.sweeps) == 6 and len(lines) == len(merge_sweeps(tgt.sweeps)) == 4
    for line in lines:
        assert "-m torch.distributed.run --nproc_per_node=4" in line and "train.py -m" in line
        assert "hydra/launcher=slurm_8x4" in line and "optimizer=sgd,kfac,eva" in line
    assert not (tmp_path / "runs").exists()


def test_cpu_dry_run_prints_the_sweeps_and_the_benchmark(tmp_path, capsys):
    repro_run.run_targets([target("lm", "cpu")], Layout(tmp_path, "cpu"), dry_run=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert "-m scripts.bench --experiment lm,scale=cpu --steps 30" in lines[-1]
    # 7 lr sweeps in 3 multiruns: the settings that share their other overrides and rates
    assert len(target("lm", "cpu").tuned) == 7 and len(lines) == 3 + 1
    sweep = "experiment=lm scale=cpu seed=0 optimizer=adamw,eva_adamw optimizer.lr=0.001,0.002"
    assert sweep in lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_benchmark_two_targets_share_runs_once(tmp_path, capsys):
    """Tables 5 and 10 read one step-time record: asked for together, it is benchmarked once."""
    targets = [target(name, "paper") for name in ("table5", "table10")]
    assert targets[0].bench == targets[1].bench
    repro_run.run_targets(targets, Layout(tmp_path, "paper"), dry_run=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert len(lines) == len(targets[0].bench) == 2
    assert all("-m scripts.bench" in line for line in lines)
    assert len(set(lines)) == 2

"""``scripts/repro/render.py``: tables and figures (with time to target) from fabricated records,
and what is missing or diverged said so.
"""

from __future__ import annotations

import json

from harness.records import RunRecord
from scripts.repro import records as repro_records
from scripts.repro.render import render
from scripts.repro.run import Layout, pending
from scripts.repro.targets import target
from tests.scripts.repro.fabricate import fabricate, fabricate_lm_target


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
    assert "At 20 epochs (the same lrs, every seed): No setting has a finished run yet" in md

    # Table 4's 20-epoch runs (SGD and Eva so far): a row of panels and a target of their own
    long_curves = {"optimizer=sgd": [70, 84, 86], "optimizer=eva": [75, 86, 85]}
    for tuned in tgt.tuned:
        if tuned.label in long_curves:
            (longer,) = tuned.longer_runs(0.1)
            for run in longer.runs():
                *early, end = long_curves[tuned.label]
                end += 0.5 if str(run["seed"]) == "0" else 0.0  # the seeds differ a little
                accs = [*early, end]
                fabricate(layout, longer, run, {"test_acc": end / 100}, rows(accs), config=run)
    md = render(tgt, layout)[0].read_text()
    assert "Target 79.00%" in md  # the 10-epoch findings are unchanged
    assert (
        "At 20 epochs (the same lrs, every seed): Target 85.17%: the lowest of the settings' "
        "final test accuracies" in md
    )
    assert "SGD (lr 0.1): epoch 3, 300 s (1.25× Eva's) (3 seeds)" in md.split("At 20 epochs")[1]
    assert "K-FAC, whole-batch statistics (lr 0.1): no finished run yet" in md
    assert "Eva, whole-batch statistics (lr 0.1): epoch 2, 240 s (1.00× Eva's) (3 seeds)" in md
    assert (
        "At 20 epochs (the same lrs, every seed): Final accuracy − SGD's: Eva, whole-batch "
        "statistics (lr 0.1) -1.00 ± 0.24 (lower)." in md
    )


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


def test_table_and_figure_from_fabricated_records(tmp_path):
    layout = Layout(tmp_path, "cpu")
    fabricate_lm_target(layout)
    written = render(target("lm", "cpu"), layout)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "lm/lm.md",
        "lm/lm.png",
        "lm/lm.pdf",
    ]
    assert all(p.stat().st_size > 1000 for p in written[1:])
    md = written[0].read_text()
    assert md.startswith("# Language model — Byte-level GPT")
    assert "Runs: 27 of 28 completed, 1 diverged" in md
    # AdamW: 1.50 and 1.52 → 1.510 ± 0.014 nats, 2.178 ± 0.020 bits; target 1.83 (K-FAC's)
    rows = [
        "| AdamW | 0.001: 1.600 · 0.002: 1.500 · 0.004: 1.550 | 0.002 | 1.510 ± 0.014 | "
        "2.178 ± 0.020 | — | step 200, 40 s | 1.00× (200.0 ms) |",
        "| SGD | 0.03: 1.900 · 0.1: 1.800 · 0.3: diverged | 0.1 | 1.810 ± 0.014 | 2.611 ± 0.020 "
        "| +0.30 ± 0.01 (higher) | step 300, 54 s | 0.90× (180.0 ms) |",
        "| Eva (on SGD) | 0.03: 1.850 · 0.1: 1.800 · 0.3: 1.800 | 0.1 | 1.810 ± 0.014 |",
        "| Eva (on AdamW), damping 1e-09 | 0.001: 1.580 · 0.002: 1.490 · 0.004: 1.700 | 0.002 | "
        "1.500 ± 0.014 | 2.164 ± 0.020 | -0.01 ± 0.01 (no difference) | step 100, 26 s | "
        "1.30× (260.0 ms) |",
        "| K-FAC | 0.03: 1.950 · 0.1: 1.820 · 0.3: 1.840 | 0.1 | 1.830 ± 0.014 | 2.640 ± 0.020 "
        "| +0.32 ± 0.01 (higher) | step 300, 120 s | 2.00× (400.0 ms) |",
        "| Shampoo | 0.03: 1.700 · 0.1: 1.650 · 0.3: 1.750 | 0.1 | 1.660 ± 0.014 | 2.395 ± 0.020 "
        "| +0.15 ± 0.01 (higher) | step 200, 100 s | 2.50× (500.0 ms) |",
    ]
    for row in rows:
        assert row in md, row
    assert "Lowest final validation loss: Eva (on AdamW), damping 1e-09 (1.500 nats/byte" in md
    assert "Target 1.830 nats/byte" in md
    assert "paper_numbers.csv" not in md


def test_missing_step_time_record_is_said(tmp_path):
    layout = Layout(tmp_path, "cpu")
    fabricate_lm_target(layout)
    (layout.bench / "steptime-cpu-lm.json").write_text("{not json")
    md = render(target("lm", "cpu"), layout)[0].read_text()
    assert "Step-time record `steptime-cpu-lm.json` is unreadable (JSONDecodeError" in md
    assert "| step 200 | — |" in md  # AdamW: steps to target, no seconds, no ratio

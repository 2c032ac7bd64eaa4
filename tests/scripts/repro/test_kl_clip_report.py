"""``scripts/repro/kl_clip_report.py`` on the records train.py writes: a run clipped on every step
and one never clipped, their per-epoch ν as logged, and bad input said in one line."""

from __future__ import annotations

from scripts.repro import kl_clip_report
from tests.runs import metrics_of, one_error_line


def test_report_shows_each_epochs_nu_and_which_runs_were_always_clipped(
    train_run, tiny, tmp_path, capsys
):
    runs = {}
    for name, kappa, extra in (
        ("bound", "1e-12", []),
        ("free", "1e12", ["optimizer.stat_batch=4"]),
    ):
        runs[name] = tmp_path / "adhoc" / name
        overrides = ["optimizer=eva", f"optimizer.kl_clip={kappa}", "trainer.epochs=2", *extra]
        train_run(runs[name], [*tiny, *overrides])
    out = tmp_path / "report" / "kl_clip"
    assert kl_clip_report.main([str(runs["free"]), str(runs["bound"]), "--out", str(out)]) == 0
    text = out.with_suffix(".md").read_text()
    summary = [line for line in text.splitlines() if line.startswith("| eva")]
    # whole-batch statistics first; epochs clipped on every step: all of the bound run's, none
    # of the free run's
    assert [line.split(" | ")[3] for line in summary] == ["2", "0"]
    assert summary[0].startswith("| eva, lr ") and "κ 1e-12, seed 0 |" in summary[0]
    assert summary[1].startswith("| eva (stat_batch 4), lr ") and "κ 1e+12" in summary[1]
    for name, run_dir in runs.items():
        for row in metrics_of(run_dir):
            rate = "100.0 %" if name == "bound" else "0.0 %"
            cells = f"| {row['epoch']} | {row['lr']:.3g} | {row['kl_clip_nu']:.3g} | {rate} |"
            assert cells in text
    assert out.with_suffix(".png").stat().st_size > 0 and out.with_suffix(".pdf").exists()
    capsys.readouterr()

    unclipped = tmp_path / "adhoc" / "sgd"
    train_run(unclipped, [*tiny, "optimizer=sgd", "trainer.epochs=1"])
    capsys.readouterr()
    for bad in (unclipped, tmp_path / "nowhere"):
        assert kl_clip_report.main([str(bad), "--out", str(tmp_path / "x")]) == 2
        assert str(bad) in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "x.md").exists()

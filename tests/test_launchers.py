"""Cluster recipes: they cannot run here (no Slurm, one machine), so check that they compose,
parse, and that Slurm's environment becomes torch.distributed's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from harness.distributed import _export_slurm_environment

ROOT = Path(__file__).resolve().parents[1]


def test_submitit_slurm_launcher_composes() -> None:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm_8x4"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (8, 4, 4)


@pytest.mark.parametrize("script", ["launch_multinode.sh", "slurm_8x4.sbatch"])
def test_launch_scripts_parse(script: str) -> None:
    path = ROOT / "scripts" / script
    assert os.access(path, os.X_OK)
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert "torch.distributed.run" in path.read_text() and "train.py" in path.read_text()


def test_slurm_tasks_become_torch_distributed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    exported = (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    )
    for key in exported:  # setenv first, so that monkeypatch restores them (absent) afterwards
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    slurm = {
        "SUBMITIT_EXECUTOR": "slurm",
        "_TEST_CLUSTER_": "slurm",
        "SLURM_JOB_ID": "42",
        "SLURM_NTASKS": "8",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu[01-02]",
        "SLURM_STEP_NODELIST": "gpu[01-02]",
    }
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    _export_slurm_environment()
    assert os.environ["RANK"] == "5" and os.environ["WORLD_SIZE"] == "8"
    assert os.environ["LOCAL_RANK"] == "1" and os.environ["MASTER_ADDR"] == "gpu01"

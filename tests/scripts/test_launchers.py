"""Cluster recipes (``scripts/launch_multinode.sh``, ``scripts/slurm_8x4.sbatch``, the submitit
launcher): they cannot run here (no Slurm, one machine), so check that they compose and parse
(Slurm's environment becoming torch.distributed's is tests/harness/test_distributed.py)."""

from __future__ import annotations

import os
import subprocess

import pytest
from hydra import compose, initialize_config_dir

from tests.repository import ROOT


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

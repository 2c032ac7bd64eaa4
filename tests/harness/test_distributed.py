"""``harness.distributed``: the fault injection of ``EVA_FAULT_AT_STEP`` (its end-to-end effect on
2 workers is tests/integration/test_faults.py) and Slurm's environment as torch.distributed's."""

from __future__ import annotations

import os

import pytest

from harness.distributed import FAULT_ENV, export_slurm_environment, install_fault


@pytest.mark.parametrize("spec", ["1", "1:x", "a:3", "1:3:crash", "1:2:3:4"])
def test_bad_fault_spec_is_one_clear_error(monkeypatch, spec: str) -> None:
    monkeypatch.setenv(FAULT_ENV, spec)
    with pytest.raises(ValueError, match=rf"{FAULT_ENV} must be RANK:STEP"):
        install_fault(0)


def test_fault_spec_for_another_rank_does_nothing(monkeypatch) -> None:
    """Only the named worker is armed (this process is rank 0; nothing is registered)."""
    import torch.optim.optimizer as optim_module

    hooks = optim_module._global_optimizer_post_hooks
    before = dict(hooks)
    monkeypatch.setenv(FAULT_ENV, "1:1")
    install_fault(0)
    assert dict(hooks) == before


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
    export_slurm_environment()
    assert os.environ["RANK"] == "5" and os.environ["WORLD_SIZE"] == "8"
    assert os.environ["LOCAL_RANK"] == "1" and os.environ["MASTER_ADDR"] == "gpu01"

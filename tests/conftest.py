"""The shared fixtures of the whole suite (defined here once; helpers that are not fixtures live
in ``tests/helpers.py``, ``tests/repository.py``, ``tests/runs.py`` (a run's record and error
line), the ``*_reference.py`` modules and a package's own helper module such as
``tests/data/files.py``; no test module imports another).

Tests mirror the source tree: the tests of ``eva/rank_one.py`` are ``tests/eva/test_rank_one.py``,
of ``train.py`` ``tests/test_train.py`` (bad input: ``tests/test_train_input.py``), of ``conf/``
``tests/test_conf.py``; multi-process and CUDA runs that span modules are in
``tests/integration/``.

- ``one_thread``: torch on one thread for the test (restored afterwards); modules of tiny tensors
  opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
- ``compose``: Hydra's compose API on ``conf/`` (``compose(overrides, hydra=False)``).
- ``train_run``: ``train.train(cfg)`` in-process, as ``@hydra.main`` would call it, with the run
  directory given explicitly (``train_run(run_dir, overrides)`` returns the summary).
- ``cli``: ``python train.py ...`` in a subprocess (``cli(args, cwd, env=None)``), for exit codes,
  one-line errors and multirun.
- ``tiny``: overrides for a run of a few milliseconds per step (ResNet-20 on 8×8 synthetic
  images, 4 steps per epoch, CPU, no W&B, no progress bar).

Tests marked ``long`` (half a minute or more on 2 cores) are collected first: pytest-xdist hands out
tests in collection order, so its two workers start on the long ones side by side instead of
one worker finishing the suite alone on a long test collected late.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from tests.repository import CONF as CONF_DIR
from tests.repository import ROOT, TINY


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: long first


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _compose(overrides: Sequence[str] = (), hydra: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.fixture
def compose() -> Callable[..., DictConfig]:
    return _compose


@pytest.fixture
def tiny() -> tuple[str, ...]:
    return TINY


@pytest.fixture
def train_run() -> Callable[[Path, Sequence[str]], dict[str, Any]]:
    """Compose, point ``HydraConfig.runtime.output_dir`` at ``run_dir``, call ``train.train``."""
    import train

    def run(run_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
        cfg = _compose([*overrides, f"out_root={run_dir.parent}"], hydra=True)
        with read_write(cfg), open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
        task = copy.deepcopy(cfg)
        with read_write(task), open_dict(task):
            del task["hydra"]  # what Hydra's run_job hands to the task function
        HydraConfig.instance().set_config(cfg)
        try:
            return train.train(task)
        finally:
            HydraConfig.instance().cfg = None

    return run


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``python train.py *args`` with W&B/Hydra variables cleared and one thread per process."""

    def run(
        args: Sequence[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
        environ |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
        return subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *args],
            cwd=cwd,
            env=environ,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run

"""The repository the tests run in, whatever the depth of the test file that asks.

- ``ROOT``: the repository root (``train.py``, ``conf/``, ``results/``, ``scripts/``).
- ``CONF``: the Hydra configs, ``ROOT / "conf"``.
- ``TINY``: the overrides of a ``train.py`` run of a few milliseconds per step (the ``tiny``
  fixture of ``conftest.py`` hands them to tests; module-level constants import them here).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

TINY = (
    "model=resnet20",
    "dataset=synthetic",
    "dataset.input_shape=[3,8,8]",
    "dataset.num_train=32",
    "dataset.num_test=16",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=16",
    "trainer.device=cpu",
    "trainer.progress=false",
    "logger.wandb=false",
)
"""A run of 4 steps per epoch that takes milliseconds per step on one CPU thread."""

"""Launching ``train.py`` as 2 workers (gloo, CPU): the tiny autoencoder run the
multi-process tests share, a clean environment, a free port and the ``torchrun`` command."""

from __future__ import annotations

import os
import socket
import sys

from tests.repository import ROOT

ARGS = [
    "model=autoencoder",
    "model.kwargs.dims=[12,6,3]",
    "dataset=synthetic",
    "dataset.num_classes=null",
    "dataset.input_shape=[12]",
    "dataset.num_train=32",
    "dataset.num_test=16",
    "trainer.epochs=2",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=8",
    "trainer.device=cpu",
    "trainer.progress=false",
    "logger.wandb=false",
    "schedule=constant",
    "name=run",
]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command() -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "train.py",
    ]

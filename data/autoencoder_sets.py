"""FACES and CURVES, the deep-autoencoder benchmarks of Martens' Hessian-free paper (2010).

Both come as MATLAB ``.mat`` files from www.cs.toronto.edu/~jmartens/ and are read with
:func:`scipy.io.loadmat`:

* **CURVES** — ``digs3pts_1.mat``: ``bdata`` (20,000 × 784, the training images) and
  ``bdatatest`` (10,000 × 784, the test images); 28×28 synthetic curves with values in [0, 1].
* **FACES** — ``newfaces_rot_single.mat``: one matrix ``newfaces_single`` (625 × 165,600, one
  25×25 face per *column*). Martens' split, kept here: the first 103,500 samples (25/40) train,
  the last 41,400 (10/40) test; the 20,700 in between (his validation set) are not used.

Any ``.mat`` file with the same kind of contents can be read with :func:`load_mat_autoencoder`:
the keys are configurable, and the orientation (samples as rows or as columns) is detected from
the known feature dimension (784 for CURVES, 625 for FACES).

**Evaluation uses the held-out test split.** The Eva authors' loader evaluated the autoencoders
on their training images; this module returns a separate test split and the project reports
test losses on it, so test numbers here are not comparable one-to-one with theirs.

Autoencoders reconstruct their input, so the loaders return inputs only (float32); the dataset
registry pairs them with themselves as targets.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CURVES_FEATURES",
    "FACES_FEATURES",
    "load_curves",
    "load_faces",
    "load_mat_autoencoder",
]

CURVES_FEATURES = 784
FACES_FEATURES = 625
_URL = "https://www.cs.toronto.edu/~jmartens/"


def _rows(matrix: np.ndarray, features: int, key: str, path: Path) -> np.ndarray:
    """Return ``matrix`` with one sample per row, detecting the orientation from ``features``."""
    if matrix.ndim != 2:
        raise ValueError(f"{path}: '{key}' has shape {matrix.shape}, expected a 2-D matrix")
    if matrix.shape[1] == features:
        return matrix
    if matrix.shape[0] == features:
        return matrix.T
    raise ValueError(
        f"{path}: '{key}' has shape {matrix.shape}; neither dimension is the expected "
        f"feature size {features}"
    )


def load_mat_autoencoder(
    path: str | os.PathLike[str],
    *,
    features: int,
    train_key: str,
    test_key: str | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    how_to_get: str = "",
) -> tuple[Tensor, Tensor]:
    """Read train and test matrices for an autoencoder from a ``.mat`` file.

    Either the file has a separate test matrix (``test_key``), or one matrix (``train_key``) is
    split: its first ``train_size`` samples train and its last ``test_size`` samples test.

    Args:
        path: The ``.mat`` file (MATLAB v4–v7; not v7.3/HDF5).
        features: Number of features per sample; decides the orientation.
        train_key: Variable holding the training samples (or all samples when splitting).
        test_key: Variable holding the test samples. Default: None (split ``train_key``).
        train_size: Leading samples used for training when splitting. Default: None (required
            then).
        test_size: Trailing samples used for testing when splitting. Default: None (required
            then).
        how_to_get: Appended to the error for a missing file. Default: empty.

    Returns:
        ``(train, test)``: float32 tensors of shape ``(N, features)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: A key is missing (the message lists the file's variables), the shapes do not
            match ``features``, the split sizes are missing or too large, or the file is v7.3.
    """
    import scipy.io

    path = Path(path).expanduser()
    if not path.is_file():
        hint = f"; {how_to_get}" if how_to_get else ""
        raise FileNotFoundError(f"autoencoder data not found: looked for {path}{hint}")
    keys = [train_key] + ([test_key] if test_key else [])
    try:
        contents = scipy.io.loadmat(path, variable_names=keys)
    except NotImplementedError as exc:  # scipy's message for MATLAB v7.3 (HDF5) files
        raise ValueError(
            f"{path} is a MATLAB v7.3 (HDF5) file; re-save it with save(..., '-v7')"
        ) from exc
    missing = [k for k in keys if k not in contents]
    if missing:
        present = sorted(name for name, _, _ in scipy.io.whosmat(path))
        raise ValueError(f"{path} has no variable {missing[0]!r}; it holds {present}")

    train = _rows(np.asarray(contents[train_key]), features, train_key, path)
    if test_key:
        test = _rows(np.asarray(contents[test_key]), features, test_key, path)
    else:
        if train_size is None or test_size is None:
            raise ValueError("train_size and test_size are required when test_key is None")
        if train_size < 1 or test_size < 1 or train_size + test_size > len(train):
            raise ValueError(
                f"train_size + test_size must be at most the {len(train)} samples in "
                f"'{train_key}' (both positive), got {train_size} + {test_size}"
            )
        train, test = train[:train_size], train[len(train) - test_size :]
    return _float_tensor(train), _float_tensor(test)


def _float_tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _file(root: str | os.PathLike[str], filename: str) -> Path:
    """``root`` itself when it is a file, else ``root / filename``."""
    root = Path(root).expanduser()
    return root if root.is_file() else root / filename


def load_curves(
    root: str | os.PathLike[str],
    *,
    filename: str = "digs3pts_1.mat",
    train_key: str = "bdata",
    test_key: str = "bdatatest",
) -> tuple[Tensor, Tensor]:
    """Load CURVES: 20,000 training and 10,000 test 784-vectors.

    Args:
        root: Folder holding ``filename``, or the ``.mat`` file itself.
        filename: Default: ``"digs3pts_1.mat"`` (Martens' file name).
        train_key: Default: ``"bdata"``.
        test_key: Default: ``"bdatatest"``.

    Returns:
        ``(train, test)`` float32 tensors of shape ``(N, 784)``.

    Raises:
        FileNotFoundError: The file is missing (the message says where to download it).
        ValueError: See :func:`load_mat_autoencoder`.
    """
    return load_mat_autoencoder(
        _file(root, filename),
        features=CURVES_FEATURES,
        train_key=train_key,
        test_key=test_key,
        how_to_get=f"download {_URL}digs3pts_1.mat",
    )


def load_faces(
    root: str | os.PathLike[str],
    *,
    filename: str = "newfaces_rot_single.mat",
    train_key: str = "newfaces_single",
    test_key: str | None = None,
    train_size: int = 103_500,
    test_size: int = 41_400,
) -> tuple[Tensor, Tensor]:
    """Load FACES: 625-vectors (25×25 faces), Martens' 103,500 train / 41,400 test split.

    Args:
        root: Folder holding ``filename``, or the ``.mat`` file itself.
        filename: Default: ``"newfaces_rot_single.mat"`` (Martens' file name).
        train_key: The variable with all samples (or only the training ones when ``test_key`` is
            given). Default: ``"newfaces_single"``.
        test_key: A variable with the test samples, for files that store them separately.
            Default: None (split ``train_key``).
        train_size: Leading samples that train when splitting. Default: 103,500.
        test_size: Trailing samples that test when splitting. Default: 41,400.

    Returns:
        ``(train, test)`` float32 tensors of shape ``(N, 625)``.

    Raises:
        FileNotFoundError: The file is missing (the message says where to download it).
        ValueError: See :func:`load_mat_autoencoder`.
    """
    return load_mat_autoencoder(
        _file(root, filename),
        features=FACES_FEATURES,
        train_key=train_key,
        test_key=test_key,
        train_size=train_size,
        test_size=test_size,
        how_to_get=f"download {_URL}newfaces_rot_single.mat",
    )

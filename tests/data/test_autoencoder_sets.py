"""``data/autoencoder_sets.py``: the CURVES and Faces ``.mat`` files.

Loaders read small files written in the real on-disk format (``tests.data.files``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.autoencoder_sets import load_curves, load_faces, load_mat_autoencoder


# ---------------------------------------------------------------------------- .mat files
def test_curves_mat(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    train, test = rng.random((12, 784)), rng.random((5, 784))
    scipy.io.savemat(tmp_path / "digs3pts_1.mat", {"bdata": train, "bdatatest": test})
    x_train, x_test = load_curves(tmp_path)
    assert x_train.shape == (12, 784) and x_test.shape == (5, 784)
    assert x_train.dtype == torch.float32
    assert torch.allclose(x_test, torch.from_numpy(test).float())
    # configurable keys, samples stored as columns
    scipy.io.savemat(tmp_path / "other.mat", {"X": train.T, "testdata": test.T})
    x_train, x_test = load_curves(tmp_path / "other.mat", train_key="X", test_key="testdata")
    assert x_train.shape == (12, 784) and torch.allclose(x_train, torch.from_numpy(train).float())
    with pytest.raises(ValueError, match=r"no variable 'nope'.*\['X', 'testdata'\]"):
        load_curves(tmp_path / "other.mat", train_key="nope", test_key="testdata")


def test_faces_mat_split_from_one_matrix(tmp_path):
    import scipy.io

    all_faces = np.arange(625 * 40, dtype=np.float64).reshape(625, 40)  # one face per column
    scipy.io.savemat(tmp_path / "newfaces_rot_single.mat", {"newfaces_single": all_faces})
    train, test = load_faces(tmp_path, train_size=25, test_size=10)
    assert train.shape == (25, 625) and test.shape == (10, 625)
    assert torch.equal(train[0], torch.from_numpy(all_faces[:, 0]).float())
    assert torch.equal(test[-1], torch.from_numpy(all_faces[:, -1]).float())
    assert torch.equal(test[0], torch.from_numpy(all_faces[:, 30]).float())  # last 10 of 40
    with pytest.raises(ValueError, match="at most the 40 samples"):
        load_faces(tmp_path, train_size=35, test_size=10)
    scipy.io.savemat(tmp_path / "wrong.mat", {"m": np.zeros((7, 9))})
    with pytest.raises(ValueError, match="feature size 625"):
        load_mat_autoencoder(
            tmp_path / "wrong.mat", features=625, train_key="m", train_size=1, test_size=1
        )


def test_mat_missing_says_where_to_download(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_faces(tmp_path)
    assert str(tmp_path / "newfaces_rot_single.mat") in str(info.value)
    assert "cs.toronto.edu/~jmartens" in str(info.value)

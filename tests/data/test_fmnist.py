"""``data/fmnist.py``: idx files (Fashion-MNIST).

Loaders read small files written in the real on-disk format (``tests.data.files``); real
data is used when present (skipped otherwise).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from data.fmnist import FASHION_MNIST_ROOT, load_fashion_mnist, load_idx, load_idx_dataset
from tests.data.files import write_idx, write_mnist_format


# ---------------------------------------------------------------------------- idx files
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_files(tmp_path, gz):
    expected = write_mnist_format(tmp_path / "fm", gz)
    for split in ("train", "test"):
        x, y = load_idx_dataset(tmp_path / "fm", split)
        images, labels = expected[split]
        assert x.shape == (len(images), 784) and x.dtype == torch.float32
        assert torch.allclose(x, torch.from_numpy(images).reshape(len(images), -1).float() / 255)
        assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    x, _ = load_fashion_mnist("test", tmp_path / "fm", flatten=False)
    assert x.shape == (4, 1, 28, 28) and 0 <= x.min() and x.max() <= 1


def test_idx_header_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x01\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an idx file"):
        load_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="header declares"):
        load_idx(short)
    ok = tmp_path / "ok"
    write_idx(ok, np.arange(6, dtype=np.uint8).reshape(2, 3), gz=False)
    assert load_idx(ok).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_idx_missing_says_how_to_get(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist("train", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "train-images-idx3-ubyte") in message
    assert "apt-get install -y dataset-fashion-mnist" in message


@pytest.mark.skipif(
    not (FASHION_MNIST_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)
def test_real_fashion_mnist():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10_000, 784) and x.dtype == torch.float32
    assert x.min() == 0 and x.max() == 1
    assert torch.equal(y.bincount(), torch.full((10,), 1000))
    assert 0.25 < x.mean() < 0.32

"""``data/cifar.py``: CIFAR-10/100 pickles and the CIFAR-10 JPEG tarball.

Loaders read small files written in the real on-disk format (``tests.data.files``); real
data is used when present (skipped otherwise).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import cifar
from data.cifar import extract_cifar10_images, load_cifar, load_cifar10_images
from tests.data.files import CIFAR10_NAMES, dump_pickle, write_cifar10, write_cifar100

REAL_CIFAR_TARBALL = Path(os.environ.get("EVA_CIFAR10_TARBALL") or "cifar10-images.tar.gz")
"""The real CIFAR-10 JPEG tarball: ``$EVA_CIFAR10_TARBALL`` (as for ``scripts/repro/run.py``)."""


# ---------------------------------------------------------------------------- CIFAR pickles
def test_cifar10_pickles(tmp_path):
    expected = write_cifar10(tmp_path)
    for split, n in (("train", 20), ("test", 4)):
        data = load_cifar("cifar10", tmp_path, split)
        assert data.images.shape == (n, 3, 32, 32) and data.images.dtype == torch.uint8
        assert data.labels.shape == (n,) and data.labels.dtype == torch.int64
        images, labels = expected[split]
        assert np.array_equal(data.images.reshape(n, -1).numpy(), images)
        assert data.labels.tolist() == labels.tolist()
        assert data.classes == CIFAR10_NAMES
    # the batches folder itself works as root too
    again = load_cifar("cifar10", tmp_path / "cifar-10-batches-py", "test")
    assert torch.equal(again.labels, torch.from_numpy(expected["test"][1]))


def test_cifar100_pickles_fine_labels(tmp_path):
    expected = write_cifar100(tmp_path)
    data = load_cifar("cifar100", tmp_path, "train")
    assert data.images.shape == (7, 3, 32, 32)
    assert np.array_equal(data.images.reshape(7, -1).numpy(), expected["train"][0])
    assert data.labels.tolist() == expected["train"][1].tolist()
    assert data.classes[:3] == ["c0", "c1", "c2"] and len(data.classes) == 100


def test_cifar_pickle_refuses_foreign_objects(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        dump_pickle({b"data": os.getcwd, b"labels": []}, folder / name)  # a global, not an array
    with pytest.raises(pickle.UnpicklingError, match="unexpected object"):
        load_cifar("cifar10", tmp_path, "train")


def test_cifar_missing_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar("cifar10", tmp_path / "nowhere", "train")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "download=True" in message
    assert "\n" not in message


def test_cifar_download_failure_is_one_clear_line(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(RuntimeError) as info:
        load_cifar("cifar100", tmp_path, "train", download=True)
    message = str(info.value)
    assert "could not download cifar100" in message and "name resolution" in message
    assert "\n" not in message


def test_cifar_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="name must be one of"):
        load_cifar("cifar1000", tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load_cifar("cifar10", tmp_path, "valid")


def _tarball(path: Path, per_class: int = 3) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for split in ("train", "test"):
            for c, name in enumerate(("bird", "airplane")):
                for i in range(per_class):
                    buffer = io.BytesIO()
                    Image.new("RGB", (32, 32), (c * 100, i * 10, 50)).save(buffer, "JPEG")
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                    info.size = buffer.tell()
                    buffer.seek(0)
                    archive.addfile(info, buffer)


def test_extract_cifar10_images_subset_and_atomic(tmp_path):
    tar = tmp_path / "cifar10-images.tar.gz"
    _tarball(tar)
    dest = extract_cifar10_images(tar, tmp_path / "out", per_class=2)
    assert sorted(p.name for p in (dest / "train").iterdir()) == ["airplane", "bird"]
    assert len(list((dest / "test" / "bird").iterdir())) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    data = load_cifar10_images(dest, "train")
    assert data.labels.tolist() == [0, 0, 1, 1]
    # an existing destination is returned untouched
    assert extract_cifar10_images(tar, dest) == dest
    with pytest.raises(FileNotFoundError, match="looked for"):
        extract_cifar10_images(tmp_path / "missing.tar.gz", tmp_path / "other")


@pytest.mark.skipif(
    not REAL_CIFAR_TARBALL.is_file(),
    reason=f"CIFAR-10 JPEG tarball not found at {REAL_CIFAR_TARBALL} (set EVA_CIFAR10_TARBALL)",
)
def test_real_cifar10_tarball_subset(tmp_path):
    dest = extract_cifar10_images(REAL_CIFAR_TARBALL, tmp_path / "cifar", per_class=2)
    for split in ("train", "test"):
        data = load_cifar10_images(dest, split, cache=False)
        assert data.classes == CIFAR10_NAMES
        assert data.images.shape == (20, 3, 32, 32) and data.images.dtype == torch.uint8
        assert data.labels.tolist() == [c for c in range(10) for _ in range(2)]
        assert 40 < data.images.float().mean() < 200  # real pictures, not blank


def test_cifar_module_exports():
    assert cifar.CIFAR10_MEAN[0] == pytest.approx(0.4914)
    assert set(cifar.__all__) >= {"load_cifar", "load_cifar10_images", "extract_cifar10_images"}

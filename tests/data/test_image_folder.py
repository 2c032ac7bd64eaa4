"""``data/image_folder.py``: a JPEG image folder, its labels and its cache.

Loaders read small files written in the real on-disk format (``tests.data.files``).
"""

from __future__ import annotations

import pytest
import torch

from data import image_folder
from data.cifar import load_cifar10_images
from tests.data.files import write_image_folder, write_jpeg


# ---------------------------------------------------------------------------- image folders
def test_image_folder_layout_labels_and_cache(tmp_path, monkeypatch):
    root = tmp_path / "cifar10-images"
    expected = write_image_folder(root)
    for split in ("train", "test"):
        data = load_cifar10_images(root, split)
        items = expected[split]
        assert data.classes == ["airplane", "cat", "truck"]  # sorted names, not creation order
        assert data.images.shape == (len(items), 3, 32, 32) and data.images.dtype == torch.uint8
        assert data.labels.dtype == torch.int64
        order = sorted(range(len(items)), key=lambda i: items[i][0])  # by class, then file
        assert data.labels.tolist() == [data.classes.index(items[i][0]) for i in order]
        colors = data.images.float().mean(dim=(2, 3))
        target = torch.tensor([items[i][1] for i in order], dtype=torch.float32)
        assert (colors - target).abs().max() < 4  # JPEG of a flat colour decodes almost exactly
    caches = sorted(p.name for p in root.glob("*.uint8.pt"))
    assert len(caches) == 2 and not list(root.glob(".*.tmp"))  # one per split, no temp left

    # The second load comes from the cache: decoding is not called.
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite a valid cache")

    monkeypatch.setattr(image_folder, "decode_all", no_decoding)
    cached = load_cifar10_images(root, "train")
    assert cached.classes == ["airplane", "cat", "truck"] and len(cached.labels) == 6

    # A changed folder invalidates the cache.
    write_jpeg(root / "train" / "cat" / "0009.jpg", (1, 2, 3))
    with pytest.raises(AssertionError, match="decoded again"):
        load_cifar10_images(root, "train")


def test_image_folder_cache_dir_and_size_mismatch(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root)
    cache_dir = tmp_path / "cache"
    load_cifar10_images(root, "test", cache_dir=cache_dir)
    assert len(list(cache_dir.glob("test-*.uint8.pt"))) == 1
    assert not list(root.glob("*.pt"))
    write_jpeg(root / "test" / "cat" / "0005.jpg", (9, 9, 9), size=(16, 16))
    with pytest.raises(ValueError, match="same size|share one size"):
        load_cifar10_images(root, "test", cache=False)


def test_image_folder_missing_says_how_to_get(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10_images(tmp_path / "absent", "train")
    assert str(tmp_path / "absent" / "train") in str(info.value)
    assert "extract_cifar10_images" in str(info.value)

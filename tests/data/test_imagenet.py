"""``data/imagenet.py``: an ImageNet-style folder and its loader.

Loaders read small files written in the real on-disk format (``tests.data.files``).
"""

from __future__ import annotations

import pytest
import torch

from data.imagenet import IMAGENET_MEAN, build_imagenet_loader, load_imagenet
from tests.data.files import write_imagenet


def test_imagenet_folders_and_loader(tmp_path):
    write_imagenet(tmp_path)
    train, val = load_imagenet(tmp_path)
    assert train.classes == ["n01", "n02"] and len(train) == 6 and len(val) == 4
    x, y = train[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 0
    x, y = val[3]
    assert x.shape == (3, 224, 224) and y == 1
    # a flat colour normalises to (value/255 - mean) / std everywhere in the center crop
    x, y = val[0]  # class n01, written with red = 120
    expected_red = (120 / 255 - IMAGENET_MEAN[0]) / 0.229
    assert y == 0 and abs(x[0, 112, 112].item() - expected_red) < 0.1

    loader = build_imagenet_loader(val, 2, train=False, num_workers=0)
    batches = list(loader)
    assert len(batches) == 2 and batches[0][0].shape == (2, 3, 224, 224)
    assert loader.epoch == 1
    sharded = [
        build_imagenet_loader(train, 1, train=True, num_workers=0, rank=r, world_size=2)
        for r in range(2)
    ]
    assert all(len(s) == 3 for s in sharded)
    assert len(set(sharded[0].sampler) | set(sharded[1].sampler)) == 6


def test_imagenet_missing_says_how_to_get(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_imagenet(tmp_path / "imagenet")
    assert str(tmp_path / "imagenet" / "train") in str(info.value)
    assert "image-net.org" in str(info.value)

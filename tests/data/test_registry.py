"""``data/registry.py``: every dataset by name.

Loaders read small files written in the real on-disk format (``tests.data.files``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.registry import DATASETS, build_dataset
from tests.data.files import (
    write_cifar10,
    write_cifar100,
    write_image_folder,
    write_imagenet,
    write_mnist_format,
)


# ---------------------------------------------------------------------------- registry
def test_registry_builds_each_dataset(tmp_path, monkeypatch):
    import scipy.io

    write_cifar10(tmp_path / "c10")
    write_cifar100(tmp_path / "c100")
    write_image_folder(tmp_path / "imgs")
    write_mnist_format(tmp_path / "fm", gz=True)
    write_imagenet(tmp_path / "inet")
    curves_mat = {"bdata": np.zeros((6, 784)), "bdatatest": np.ones((2, 784))}
    scipy.io.savemat(tmp_path / "digs3pts_1.mat", curves_mat)
    scipy.io.savemat(tmp_path / "newfaces_rot_single.mat", {"newfaces_single": np.ones((625, 8))})

    import data.mnist

    def fake_mnist(split="train", flatten=True):
        n = 6 if split == "train" else 2
        return torch.rand((n, 784) if flatten else (n, 1, 28, 28)), torch.arange(n)

    monkeypatch.setattr(data.mnist, "load_mnist", fake_mnist)

    c10 = build_dataset("cifar10", root=tmp_path / "c10")
    assert c10.in_memory and c10.num_classes == 10 and c10.input_shape == (3, 32, 32)
    assert c10.mean is not None and c10.crop_padding == 4 and c10.flip
    train_loader, test_loader = c10.loaders(batch_size=4)
    xb, yb = next(iter(train_loader))
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert sum(len(t) for _, t in test_loader) == 4

    assert build_dataset("cifar100", root=tmp_path / "c100").num_classes == 100
    images = build_dataset("cifar10_images", root=tmp_path / "imgs")
    assert images.classes == ("airplane", "cat", "truck") and images.num_classes == 3
    fm = build_dataset("fmnist", root=tmp_path / "fm")
    assert fm.input_shape == (784,) and fm.num_classes == 10 and fm.mean is None
    fm_ae = build_dataset("fmnist", root=tmp_path / "fm", autoencoder=True)
    assert fm_ae.autoencoder and fm_ae.train[1] is fm_ae.train[0]
    assert build_dataset("mnist").train[0].shape == (6, 784)
    curves = build_dataset("curves", root=tmp_path)
    assert curves.input_shape == (784,) and curves.test[0].shape == (2, 784)
    faces = build_dataset("faces", root=tmp_path, train_size=5, test_size=2)
    assert faces.input_shape == (625,) and faces.autoencoder
    ae_train, _ = faces.loaders(batch_size=2)
    xb, yb = next(iter(ae_train))
    assert yb is xb
    synth = build_dataset("synthetic", num_train=10, num_test=4, input_shape=[3, 8, 8])
    assert synth.train[0].shape == (10, 3, 8, 8)
    assert build_dataset("synthetic", num_classes=None, input_shape=[20]).autoencoder
    inet = build_dataset("imagenet", root=tmp_path / "inet")
    assert not inet.in_memory and inet.num_classes == 2 and inet.input_shape == (3, 224, 224)
    inet_train, _ = inet.loaders(batch_size=2, num_workers=0)
    assert len(inet_train) == 3


def test_registry_errors(tmp_path):
    with pytest.raises(ValueError) as info:
        build_dataset("cifar11")
    for name in DATASETS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="takes no option 'colour'.*download"):
        build_dataset("cifar10", colour=True)
    with pytest.raises(FileNotFoundError, match="looked for"):
        build_dataset("curves", root=tmp_path)

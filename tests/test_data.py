"""Dataset loaders and the in-memory batch iterator.

Every loader reads small files this module writes in the real on-disk format (CIFAR pickles, a
JPEG image folder, idx files, ``.mat`` files, an ImageNet-style folder). The real Fashion-MNIST
files and the real CIFAR-10 JPEG tarball are used when present (skipped otherwise).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data import cifar, image_folder
from data.autoencoder_sets import load_curves, load_faces, load_mat_autoencoder
from data.cifar import extract_cifar10_images, load_cifar, load_cifar10_images
from data.fmnist import FASHION_MNIST_ROOT, load_fashion_mnist, load_idx, load_idx_dataset
from data.imagenet import IMAGENET_MEAN, build_imagenet_loader, load_imagenet
from data.loader import PerSample, TensorLoader, autoaugment_cifar10, chain, cutmix
from data.registry import DATASETS, build_dataset
from data.synthetic import synthetic_classification, synthetic_regression

REAL_CIFAR_TARBALL = Path(os.environ.get("EVA_CIFAR10_TARBALL") or "cifar10-images.tar.gz")
"""The real CIFAR-10 JPEG tarball: ``$EVA_CIFAR10_TARBALL`` (as for ``scripts/repro/run.py``)."""
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


def _dump(obj: object, path: Path, protocol: int = 2) -> None:
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
        _dump(batch, folder / name)
        split = "test" if name == "test_batch" else "train"
        expected[split][0].append(data)
        expected[split][1].extend(labels)
    meta = {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": 4}
    _dump(meta, folder / "batches.meta")
    return {k: (np.concatenate(v[0]), np.array(v[1])) for k, v in expected.items()}


def write_cifar100(root: Path, seed: int = 1) -> dict[str, tuple]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    expected = {}
    for split, n in (("train", 7), ("test", 3)):
        batch, data, labels = _cifar_batch(rng, n, "fine_labels", 100, 0)
        # str keys (protocol 4), as a Python-3 writer would produce: both kinds must load
        _dump({k.decode(): v for k, v in batch.items()}, folder / split, protocol=4)
        expected[split] = (data, np.array(labels))
    _dump({"fine_label_names": [f"c{i}" for i in range(100)]}, folder / "meta")
    return expected


def _jpeg(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> None:
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
                _jpeg(root / split / name / f"{i:04d}.jpg", color)
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
        _dump({b"data": os.getcwd, b"labels": []}, folder / name)  # a global, not an array
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

    monkeypatch.setattr(image_folder, "_decode_all", no_decoding)
    cached = load_cifar10_images(root, "train")
    assert cached.classes == ["airplane", "cat", "truck"] and len(cached.labels) == 6

    # A changed folder invalidates the cache.
    _jpeg(root / "train" / "cat" / "0009.jpg", (1, 2, 3))
    with pytest.raises(AssertionError, match="decoded again"):
        load_cifar10_images(root, "train")


def test_image_folder_cache_dir_and_size_mismatch(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root)
    cache_dir = tmp_path / "cache"
    load_cifar10_images(root, "test", cache_dir=cache_dir)
    assert len(list(cache_dir.glob("test-*.uint8.pt"))) == 1
    assert not list(root.glob("*.pt"))
    _jpeg(root / "test" / "cat" / "0005.jpg", (9, 9, 9), size=(16, 16))
    with pytest.raises(ValueError, match="same size|share one size"):
        load_cifar10_images(root, "test", cache=False)


def test_image_folder_missing_says_how_to_get(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10_images(tmp_path / "absent", "train")
    assert str(tmp_path / "absent" / "train") in str(info.value)
    assert "extract_cifar10_images" in str(info.value)


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


# ---------------------------------------------------------------------------- ImageNet
def write_imagenet(root: Path) -> None:
    for split, count in (("train", 3), ("val", 2)):
        for c, synset in enumerate(("n02", "n01")):
            for i in range(count):
                _jpeg(root / split / synset / f"{i}.JPEG", (c * 120, i * 40, 90), size=(64, 64))


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


# ---------------------------------------------------------------------------- synthetic
def test_synthetic_is_seeded():
    x, y = synthetic_classification(8, (3, 5, 5), 4, seed=3)
    assert x.shape == (8, 3, 5, 5) and x.dtype == torch.uint8 and int(y.max()) < 4
    x2, y2 = synthetic_classification(8, (3, 5, 5), 4, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    xf, _ = synthetic_classification(4, (7,), 2, dtype=torch.float64)
    assert xf.dtype == torch.float64
    a, b = synthetic_regression(5, (6,))
    assert b is a and a.shape == (5, 6) and 0 <= a.min() and a.max() < 1
    _, t = synthetic_regression(5, (6,), (2, 3))
    assert t.shape == (5, 2, 3)
    with pytest.raises(ValueError, match="input_shape"):
        synthetic_classification(2, (3, 0))


# ---------------------------------------------------------------------------- TensorLoader
def _indexed(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose value is their index, so batches reveal which samples they hold."""
    return torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n)


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch(drop_last):
    x, y = _indexed(103)
    loader = TensorLoader(x, y, 10, drop_last=drop_last, seed=1)
    assert len(loader) == (10 if drop_last else 11)
    orders = []
    for epoch in range(2):
        assert loader.epoch == epoch
        seen = torch.cat([t for _, t in loader])
        assert len(seen) == (100 if drop_last else 103)
        assert len(set(seen.tolist())) == len(seen)  # no repeats
        if not drop_last:
            assert sorted(seen.tolist()) == list(range(103))
        orders.append(seen)
    assert not torch.equal(orders[0], orders[1])  # a new permutation every epoch
    ordered = TensorLoader(x, y, 10, shuffle=False)
    assert torch.cat([t for _, t in ordered]).tolist() == list(range(103))


def test_state_dict_resumes_same_batches_and_augmentations():
    x, y = synthetic_classification(50, (3, 8, 8), 5, seed=0)
    kwargs = dict(crop_padding=2, flip=True, seed=7, batch_transform=autoaugment_cifar10())
    reference = TensorLoader(x, y, 8, **kwargs)
    full = [b for _ in range(2) for b in reference]  # two epochs

    run = TensorLoader(x, y, 8, **kwargs)
    got = []
    for i, batch in enumerate(run):
        got.append(batch)
        if i == 2:
            break
    state = run.state_dict()
    assert state["epoch"] == 0 and state["batch"] == 3
    resumed = TensorLoader(x, y, 8, **kwargs)
    resumed.load_state_dict(pickle.loads(pickle.dumps(state)))  # survives serialisation
    got += list(resumed) + list(resumed)
    assert len(got) == len(full)
    for (a, ya), (b, yb) in zip(got, full):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    assert resumed.state_dict()["epoch"] == 2
    with pytest.raises(ValueError, match="saved for 50 samples"):
        TensorLoader(x[:40], y[:40], 8).load_state_dict(state)


def test_state_after_last_batch_points_to_next_epoch():
    x, y = _indexed(20)
    loader = TensorLoader(x, y, 10)
    for _ in loader:
        state = loader.state_dict()
    assert state["epoch"] == 1 and state["batch"] == 0
    again = TensorLoader(x, y, 10)
    again.load_state_dict(state)
    list(loader)
    assert len(list(again)) == 2  # a full epoch, not an empty one


def test_batch_transform_leaves_global_rng_alone():
    x, y = synthetic_classification(16, (3, 8, 8), 4)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    list(TensorLoader(x, y, 8, batch_transform=cutmix(4)))
    assert torch.equal(torch.rand(3), expected)


def test_sharding_two_ranks_covers_epoch_disjointly():
    x, y = synthetic_classification(45, (3, 6, 6), 3, seed=2)
    y = torch.arange(45)  # identify samples
    kwargs = dict(crop_padding=2, flip=True, seed=5)
    single = list(TensorLoader(x, y, 8, **kwargs))
    ranks = [list(TensorLoader(x, y, 8, rank=r, world_size=2, **kwargs)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 6
    seen = [torch.cat([t for _, t in batches]).tolist() for batches in ranks]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(45))
    for (xs, ys), (x0, y0), (x1, y1) in zip(single, *ranks):
        # each rank holds its half of the global batch, augmented identically
        assert torch.equal(torch.cat([y0, y1]), ys) and torch.equal(torch.cat([x0, x1]), xs)
    with pytest.raises(ValueError, match="multiple of world_size"):
        TensorLoader(x, y, 9, world_size=2)
    with pytest.raises(ValueError, match="rank must be in"):
        TensorLoader(x, y, 8, rank=2, world_size=2)


def test_crop_and_flip_match_a_per_image_reference():
    x, y = synthetic_classification(12, (3, 10, 10), 2, seed=4)
    loader = TensorLoader(x, y, 12, crop_padding=4, flip=True, shuffle=False, seed=9)
    draws = loader._draw_epoch()
    [(batch, labels)] = list(loader)
    assert batch.shape == (12, 3, 10, 10) and batch.dtype == torch.float32
    assert torch.equal(labels, y)
    for i in range(12):
        top, left = draws["offsets"][i].tolist()
        crop = F.pad(x[i], (4, 4, 4, 4))[:, top : top + 10, left : left + 10]
        if draws["flips"][i]:
            crop = crop.flip(-1)
        assert torch.allclose(batch[i], crop.float() / 255)
    assert draws["flips"].any() and not draws["flips"].all()


def test_normalisation_and_autoencoder_targets():
    x = torch.full((4, 3, 2, 2), 255, dtype=torch.uint8)
    loader = TensorLoader(x, torch.zeros(4), 4, mean=(0.5, 0.0, 1.0), std=(0.5, 2.0, 1.0))
    [(batch, _)] = list(loader)
    assert torch.allclose(batch[:, 0], torch.ones(1))  # (1 - 0.5) / 0.5
    assert torch.allclose(batch[:, 1], torch.tensor(0.5))  # (1 - 0) / 2
    assert torch.allclose(batch[:, 2], torch.zeros(1))  # (1 - 1) / 1
    vectors, same = synthetic_regression(10, (5,))
    xb, yb = next(iter(TensorLoader(vectors, same, 4)))
    assert yb is xb and xb.shape == (4, 5)
    with pytest.raises(ValueError, match="crop_padding/flip need image inputs"):
        TensorLoader(vectors, same, 4, flip=True)
    with pytest.raises(ValueError, match="std must be positive"):
        TensorLoader(x, torch.zeros(4), 4, std=(1.0, 0.0, 1.0))


def test_cutmix_gives_soft_labels_and_autoaugment_keeps_uint8():
    x, y = synthetic_classification(16, (3, 32, 32), 10, seed=1)
    hook = chain(autoaugment_cifar10(), cutmix(10))
    xb, yb = next(iter(TensorLoader(x, y, 16, crop_padding=4, flip=True, batch_transform=hook)))
    assert xb.shape == (16, 3, 32, 32) and xb.dtype == torch.float32
    assert yb.shape == (16, 10) and yb.dtype == torch.float32
    assert torch.allclose(yb.sum(1), torch.ones(16)) and (yb > 0).sum(1).max() <= 2
    seen = []

    def spy(images, targets):
        seen.append(images.dtype)
        return images, targets

    aug = PerSample(lambda image: image.flip(-2))
    out, _ = aug(x[:2], y[:2])
    assert torch.equal(out, x[:2].flip(-2))
    list(TensorLoader(x, y, 8, batch_transform=chain(spy, autoaugment_cifar10())))
    assert seen == [torch.uint8, torch.uint8]  # hooks see uint8 before normalisation


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


def test_cifar_module_exports():
    assert cifar.CIFAR10_MEAN[0] == pytest.approx(0.4914)
    assert set(cifar.__all__) >= {"load_cifar", "load_cifar10_images", "extract_cifar10_images"}

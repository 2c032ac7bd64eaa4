"""CIFAR-10 and CIFAR-100 as in-memory uint8 tensors.

Two on-disk formats are read:

* **torchvision's official python-pickle format** (what ``torchvision.datasets.CIFAR10/100``
  download): ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch`` (keys ``data``,
  ``labels``), or ``cifar-100-python/train`` and ``test`` (keys ``data``, ``fine_labels``).
  The files are read directly with :mod:`pickle` (only numpy arrays may be constructed), so no
  per-image PIL conversion happens. Passing ``download=True`` fetches them with torchvision.
* **an image-folder layout** ``root/train/<class>/*.jpg`` and ``root/test/<class>/*.jpg`` —
  what the shared ``cifar10-images.tar.gz`` unpacks to (see :func:`extract_cifar10_images`).
  Class index = sorted class-folder name (for CIFAR-10 this is the standard order). The decoded
  arrays are cached as one ``.pt`` file per split (see :mod:`data.image_folder`). That copy was
  re-encoded as JPEG quality 75, so accuracies trained on it can differ slightly from the
  paper's.

Both give ``images`` of shape ``(N, 3, 32, 32)`` uint8 and ``labels`` of shape ``(N,)`` int64;
normalisation and augmentation happen per batch in :class:`data.loader.TensorLoader`.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.image_folder import LabeledImages, load_image_folder
from data.unpickle import load_numpy_pickle

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "extract_cifar10_images",
    "load_cifar",
    "load_cifar10_images",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
"""Per-channel statistics of the training sets (the values the authors' runs normalised with)."""

_SPLITS = ("train", "test")

_FORMATS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": "labels",
        "meta": ("batches.meta", "label_names"),
        "num_classes": 10,
        "torchvision": "CIFAR10",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label_key": "fine_labels",
        "meta": ("meta", "fine_label_names"),
        "num_classes": 100,
        "torchvision": "CIFAR100",
    },
}


TARBALL_HINT = (
    "unpack the CIFAR-10 JPEG tarball with "
    "data.cifar.extract_cifar10_images('cifar10-images.tar.gz', root)"
)


def _read_batch(path: Path) -> dict[str, Any]:
    """Read one pickled batch; keys come back as ``str`` whether stored as bytes or str."""
    with open(path, "rb") as stream:
        # latin1 keeps the raw bytes of arrays pickled by Python 2 (the official files) intact.
        raw = load_numpy_pickle(stream, "a CIFAR batch")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _pickle_dir(root: Path, name: str) -> Path:
    """The folder holding the batch files: ``root/<official folder>`` or ``root`` itself."""
    spec = _FORMATS[name]
    nested = root / spec["folder"]
    return nested if nested.is_dir() else root


def _download(root: Path, name: str) -> None:
    """Fetch the official files with torchvision; a failure becomes one clear error."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, _FORMATS[name]["torchvision"])
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # URLError, socket timeouts, checksum failures ...
        reason = getattr(exc, "reason", None) or exc
        raise RuntimeError(
            f"could not download {name} into {root} ({reason}); put the official "
            f"'{_FORMATS[name]['folder']}' folder there instead"
        ) from exc


def _missing(root: Path, name: str, files: list[Path]) -> FileNotFoundError:
    spec = _FORMATS[name]
    shown = ", ".join(str(f) for f in files[:2]) + (" ..." if len(files) > 2 else "")
    return FileNotFoundError(
        f"{name} not found: looked for {shown}; pass download=True, or place torchvision's "
        f"'{spec['folder']}' folder (https://www.cs.toronto.edu/~kriz/cifar.html) in {root}"
    )


def load_cifar(
    name: str,
    root: str | os.PathLike[str],
    split: str = "train",
    *,
    download: bool = False,
) -> LabeledImages:
    """Load one split of CIFAR-10 or CIFAR-100 from torchvision's python-pickle files.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: The folder that contains ``cifar-10-batches-py`` / ``cifar-100-python`` (as passed
            to torchvision), or that folder itself.
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000). Default: ``"train"``.
        download: If True and the files are missing, download them with torchvision (needs
            internet access). Default: False.

    Returns:
        ``images`` ``(N, 3, 32, 32)`` uint8, ``labels`` ``(N,)`` int64 (CIFAR-100: the fine
        labels) and the class names (from the meta file; ``["0", "1", ...]`` when it is absent).

    Raises:
        ValueError: Unknown ``name`` or ``split``, or a batch file with unexpected contents.
        FileNotFoundError: The batch files are missing and ``download`` is False.
        RuntimeError: ``download=True`` and the download failed.
    """
    if name not in _FORMATS:
        raise ValueError(f"name must be one of {tuple(_FORMATS)}, got {name!r}")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    spec = _FORMATS[name]
    root = Path(root).expanduser()
    folder = _pickle_dir(root, name)
    files = [folder / f for f in spec[split]]
    if not all(f.is_file() for f in files):
        if not download:
            raise _missing(root, name, [f for f in files if not f.is_file()])
        _download(root, name)
        folder = _pickle_dir(root, name)
        files = [folder / f for f in spec[split]]

    data, labels = [], []
    for path in files:
        batch = _read_batch(path)
        if "data" not in batch or spec["label_key"] not in batch:
            raise ValueError(
                f"{path} lacks the keys 'data' and '{spec['label_key']}' of a {name} batch"
            )
        array = np.asarray(batch["data"], dtype=np.uint8)
        if array.ndim != 2 or array.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: 'data' has shape {array.shape}, expected (N, 3072)")
        data.append(array)
        labels.append(np.asarray(batch[spec["label_key"]], dtype=np.int64))
    images = torch.from_numpy(np.concatenate(data)).reshape(-1, 3, 32, 32)
    targets = torch.from_numpy(np.concatenate(labels))
    if len(images) != len(targets):
        raise ValueError(f"{name} {split}: {len(images)} images but {len(targets)} labels")

    meta_file, meta_key = spec["meta"]
    classes = [str(i) for i in range(spec["num_classes"])]
    if (folder / meta_file).is_file():
        meta = _read_batch(folder / meta_file)
        names = meta.get(meta_key)
        if names is not None and len(names) == spec["num_classes"]:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return LabeledImages(images, targets, classes)


def load_cifar10_images(
    root: str | os.PathLike[str],
    split: str = "train",
    *,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LabeledImages:
    """Load one split of CIFAR-10 from the image-folder layout ``root/<split>/<class>/*.jpg``.

    Args:
        root: The folder holding ``train/`` and ``test/`` (what
            :func:`extract_cifar10_images` produces).
        split: ``"train"`` or ``"test"``. Default: ``"train"``.
        cache: Read/write the decoded uint8 arrays as one ``.pt`` file. Default: True.
        cache_dir: Where that file goes. Default: None, next to the split folder (in ``root``).

    Returns:
        ``images`` ``(N, 3, 32, 32)`` uint8, ``labels`` ``(N,)`` int64 and the class names.

    Raises:
        ValueError: Unknown ``split``, or images that are not all the same size.
        FileNotFoundError: ``root/<split>`` is missing or holds no images.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    return load_image_folder(
        Path(root).expanduser() / split,
        cache=cache,
        cache_dir=cache_dir,
        mode="RGB",
        how_to_get=TARBALL_HINT,
    )


def extract_cifar10_images(
    tar_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    per_class: int | None = None,
) -> Path:
    """Unpack the CIFAR-10 JPEG tarball (``train/<class>/NNNN.jpg``, ``test/<class>/NNNN.jpg``).

    The archive is streamed once and unpacked into a temporary sibling of ``dest`` that is
    renamed to ``dest`` only when complete, so an existing ``dest`` is always a whole extraction.
    Members are extracted with ``tarfile``'s ``"data"`` filter (no absolute paths, links out of
    the tree or device files).

    Args:
        tar_path: The ``cifar10-images.tar.gz`` file.
        dest: The folder to create; it will contain ``train/`` and ``test/``.
        per_class: If set, keep only the first ``per_class`` images (in archive order) of each
            class in each split — a small subset for tests and demos. Default: None (all).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`. If ``dest`` already exists it is returned untouched.

    Raises:
        FileNotFoundError: ``tar_path`` does not exist.
        ValueError: ``per_class`` is not positive, or the archive has no ``train/``/``test/``.
    """
    tar_path = Path(tar_path).expanduser()
    dest = Path(dest).expanduser()
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be a positive integer or None, got {per_class}")
    if dest.exists():
        return dest
    if not tar_path.is_file():
        raise FileNotFoundError(
            f"CIFAR-10 image tarball not found: looked for {tar_path} (cifar10-images.tar.gz)"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)  # mkdtemp creates 0700; give the usual permissions
        counts: dict[str, int] = defaultdict(int)
        with tarfile.open(tar_path, mode="r|*") as archive:
            for member in archive:
                parts = Path(member.name).parts
                if not parts or parts[0] not in _SPLITS:
                    continue
                if member.isfile() and per_class is not None:
                    key = "/".join(parts[:2])
                    if counts[key] >= per_class:
                        continue
                    counts[key] += 1
                archive.extract(member, tmp, filter="data")
        if not all((tmp / split).is_dir() for split in _SPLITS):
            raise ValueError(
                f"{tar_path} has no train/ and test/ folders; is it the CIFAR tarball?"
            )
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not merely another process finishing first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest

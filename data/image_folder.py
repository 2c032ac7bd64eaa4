"""Decode a folder of small images (``folder/<class>/<file>``) into one uint8 tensor, with a cache.

This is the in-memory counterpart of ``torchvision.datasets.ImageFolder`` for datasets small
enough to live on the GPU (CIFAR-sized images): every image is decoded once, stacked into a
``(N, C, H, W)`` uint8 tensor, and the result is cached as a single ``.pt`` file so later runs
skip the decoding (60,000 CIFAR JPEGs take about 20 s to decode on one core; the cache loads in
well under a second).

Layout and ordering:
    * class index = position of the class-folder name in the sorted list of sub-folders;
    * within a class, files are taken in sorted file-name order;
    * files with other extensions (and hidden files) are ignored.

Cache:
    The cache file ``<folder name>-<hash of its absolute path>.uint8.pt`` is written next to the
    folder (in its parent directory) or in ``cache_dir``. It stores a fingerprint of the folder
    (every file's relative path, size and modification time); a cache whose fingerprint does not
    match is ignored and rewritten. It is written to a temporary file first and moved into place
    with :func:`os.replace`, so an interrupted run never leaves a truncated cache behind. When the
    cache location is not writable the images are still returned and a warning says why.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["IMAGE_EXTENSIONS", "LabeledImages", "load_image_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
"""File extensions (lower case) that count as images."""

_CACHE_VERSION = 1


@dataclass(frozen=True)
class LabeledImages:
    """Images and labels of one split, held in memory.

    Attributes:
        images: uint8 tensor of shape ``(N, C, H, W)``.
        labels: int64 tensor of shape ``(N,)``.
        classes: Class names; ``labels`` index into this list.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]


def _scan(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """List the class folders and the (file, class index) pairs of an image folder."""
    classes = sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    samples: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        files = sorted(
            entry.name
            for entry in os.scandir(folder / name)
            if entry.is_file()
            and not entry.name.startswith(".")
            and entry.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        samples.extend((folder / name / file, index) for file in files)
    return classes, samples


def _fingerprint(folder: Path, samples: list[tuple[Path, int]]) -> str:
    """Hash of every image's relative path, size and modification time."""
    digest = hashlib.sha256()
    for path, label in samples:
        stat = path.stat()
        name = path.relative_to(folder).as_posix()
        digest.update(f"{name}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cache_path(folder: Path, cache_dir: Path | None) -> Path:
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    directory = cache_dir if cache_dir is not None else folder.resolve().parent
    return directory / f"{folder.name}-{key}.uint8.pt"


def _decode(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert(mode))


def decode_all(samples: list[tuple[Path, int]], mode: str, num_workers: int) -> np.ndarray:
    """Decode every image into one ``(N, H, W, C)`` uint8 array (all images must share a size)."""
    first = _decode(samples[0][0], mode)
    if first.ndim == 2:
        first = first[:, :, None]
    out = np.empty((len(samples), *first.shape), dtype=np.uint8)

    def work(chunk: range) -> None:
        for i in chunk:
            array = _decode(samples[i][0], mode)
            if array.ndim == 2:
                array = array[:, :, None]
            if array.shape != first.shape:
                raise ValueError(
                    f"{samples[i][0]} is {array.shape[1]}x{array.shape[0]} but the first image "
                    f"is {first.shape[1]}x{first.shape[0]}; all images must share one size"
                )
            out[i] = array

    # Pillow releases the GIL while decoding, so threads give a near-linear speed-up.
    step = max(1, -(-len(samples) // (4 * num_workers)))
    chunks = [range(s, min(s + step, len(samples))) for s in range(0, len(samples), step)]
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        for future in [pool.submit(work, chunk) for chunk in chunks]:
            future.result()
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomically(payload: dict, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            torch.save(payload, stream)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_image_folder(
    folder: str | os.PathLike[str],
    *,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    mode: str = "RGB",
    num_workers: int | None = None,
    how_to_get: str = "",
) -> LabeledImages:
    """Decode ``folder/<class>/<image>`` into uint8 tensors, using (and filling) the cache.

    Args:
        folder: The split folder whose sub-folders are the classes.
        cache: If True (default) read the decoded arrays from the cache when it matches the
            folder, and write the cache otherwise.
        cache_dir: Where the cache file goes. Default: None, the folder's parent directory.
        mode: Pillow mode every image is converted to (``"RGB"`` gives 3 channels, ``"L"`` one).
            Default: ``"RGB"``.
        num_workers: Decoding threads. Default: None, the number of CPUs.
        how_to_get: Appended to the error raised when the folder is missing (a hint on how to
            obtain the data). Default: empty.

    Returns:
        The split's images ``(N, C, H, W)`` uint8, labels ``(N,)`` int64 and class names.

    Raises:
        FileNotFoundError: ``folder`` does not exist, or holds no class folder with images.
        ValueError: The images do not all have the same size.
    """
    folder = Path(folder).expanduser()
    hint = f"; {how_to_get}" if how_to_get else ""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: looked for {folder}{hint}")
    classes, samples = _scan(folder)
    if not samples:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders of {folder}{hint}"
        )
    fingerprint = _fingerprint(folder, samples)
    cache_file = _cache_path(folder, Path(cache_dir).expanduser() if cache_dir else None)

    if cache and cache_file.is_file():
        try:
            stored = torch.load(cache_file, map_location="cpu", weights_only=True)
        except Exception as exc:  # a foreign or damaged file: decode again and overwrite it
            warnings.warn(f"ignoring unreadable cache {cache_file}: {exc}", stacklevel=2)
        else:
            if (
                stored.get("version") == _CACHE_VERSION
                and stored.get("fingerprint") == fingerprint
                and stored.get("mode") == mode
            ):
                return LabeledImages(stored["images"], stored["labels"], list(stored["classes"]))

    workers = num_workers if num_workers is not None else (os.cpu_count() or 1)
    array = decode_all(samples, mode, max(1, workers))
    images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)

    if cache:
        payload = {
            "version": _CACHE_VERSION,
            "fingerprint": fingerprint,
            "mode": mode,
            "folder": str(folder.resolve()),
            "classes": classes,
            "images": images,
            "labels": labels,
        }
        try:
            _write_atomically(payload, cache_file)
        except OSError as exc:
            warnings.warn(
                f"could not write the decoded-image cache {cache_file}: {exc}", stacklevel=2
            )
    return LabeledImages(images, labels, classes)

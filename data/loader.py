"""An in-memory batch iterator for datasets that fit on the device (CIFAR, MNIST, autoencoder sets).

:class:`TensorLoader` replaces ``torch.utils.data.DataLoader`` when the whole dataset is one tensor
(uint8 images or float vectors): there are no worker processes and no per-image Python work for
the standard augmentation — each batch is gathered, randomly cropped (zero padding) and flipped
with a single indexing operation on the device the data lives on, then converted to float,
optionally upsampled (``resize``, e.g. 32 → 224 px for fine-tuning ImageNet models) and
normalised. ::

    loader = TensorLoader(images, labels, batch_size=128, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                          crop_padding=4, flip=True, seed=0, device="cuda")
    for epoch in range(epochs):
        for x, y in loader:          # one epoch; x float32 (B, 3, 32, 32), y int64 (B,)
            ...

Randomness and resuming:
    All randomness of an epoch (the permutation, every crop offset and flip, and a seed per batch
    for the optional ``batch_transform``) is drawn at the start of the epoch from one CPU
    :class:`torch.Generator` seeded with ``seed``. :meth:`TensorLoader.state_dict` stores that
    generator's state at the start of the current epoch, the epoch number and how many batches
    of it were handed out, so a run restored with :meth:`TensorLoader.load_state_dict` continues
    with exactly the batches (and augmentations) the uninterrupted run would have seen. The
    ``batch_transform`` runs under a forked CPU RNG seeded from those per-batch seeds, so
    torchvision transforms that draw from the global CPU RNG (CutMix, AutoAugment) are
    reproducible too, without disturbing the caller's global RNG.

Sharding (data parallelism):
    With ``world_size > 1`` every rank draws the same global permutation (same ``seed``) and takes
    its contiguous share of each global batch of ``batch_size`` samples, so every sample is seen
    exactly once per epoch across ranks and rank ``r``'s batches are the corresponding slices of
    the single-process batches (crops and flips included). ``batch_size`` is the *global* batch
    and must be divisible by ``world_size``. Without ``drop_last`` the final, partial global batch
    is split as evenly as possible (shares differ by at most one sample, and can be empty when
    fewer samples than ranks remain); use ``drop_last=True`` for training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from data.epochs import SeededEpochs

__all__ = [
    "BatchTransform",
    "PerSample",
    "TensorLoader",
    "autoaugment_cifar10",
    "chain",
    "cutmix",
]

BatchTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""A per-batch hook ``(images, targets) -> (images, targets)``; images are still uint8 (or the
dataset's dtype) and not yet normalised."""

_MAX_SEED = 2**62


def _resize(images: Tensor, size: int) -> Tensor:
    """Bilinear resize of a float ``(B, C, H, W)`` batch to ``size × size`` (no antialiasing)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    return resize(images, [size, size], InterpolationMode.BILINEAR, antialias=False)


class PerSample:
    """Apply an image transform to every sample of a batch independently.

    Batched torchvision transforms draw their random parameters once per call, so calling
    AutoAugment on a whole batch would give every image the same operation. This wrapper calls
    the transform once per image (a Python loop over the batch — cheap for 32×32 images, and the
    only per-image work in this module).

    Args:
        transform: A callable on one image ``(C, H, W)``.
    """

    def __init__(self, transform: Callable[[Tensor], Tensor]) -> None:
        self.transform = transform

    def __call__(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if len(images) == 0:
            return images, targets
        return torch.stack([self.transform(image) for image in images]), targets

    def __repr__(self) -> str:
        return f"PerSample({self.transform!r})"


def autoaugment_cifar10() -> BatchTransform:
    """AutoAugment with torchvision's CIFAR-10 policy, a different sub-policy per image.

    Returns:
        A batch transform for uint8 image batches (apply before normalisation).
    """
    from torchvision.transforms import v2

    return PerSample(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))


def cutmix(num_classes: int, alpha: float = 1.0) -> BatchTransform:
    """CutMix (``torchvision.transforms.v2.CutMix``) on a batch; the targets become soft labels.

    Args:
        num_classes: Number of classes (for the one-hot targets).
        alpha: Beta-distribution parameter of the mixing ratio. Default: 1.0.

    Returns:
        A batch transform returning float targets of shape ``(B, num_classes)`` (use
        ``cross_entropy`` with probability targets).
    """
    from torchvision.transforms import v2

    return v2.CutMix(num_classes=num_classes, alpha=alpha)


def chain(*transforms: BatchTransform | None) -> BatchTransform | None:
    """Compose batch transforms left to right (``None`` entries are skipped).

    Returns:
        The composition, or None when no transform is given.
    """
    steps = [t for t in transforms if t is not None]
    if not steps:
        return None

    def composed(images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        for step in steps:
            images, targets = step(images, targets)
        return images, targets

    return composed


class TensorLoader(SeededEpochs):
    """Shuffled (or ordered) mini-batches of an in-memory dataset, with batched augmentation.

    Args:
        inputs: ``(N, ...)`` tensor: uint8 images ``(N, C, H, W)`` (scaled by 1/255) or float data.
        targets: ``(N, ...)`` tensor of labels or regression targets. Pass the *same object* as
            ``inputs`` for an autoencoder: each batch's targets are then its inputs after
            augmentation and normalisation.
        batch_size: Global number of samples per batch (split across ``world_size`` ranks).
        shuffle: Draw a new permutation every epoch (True, default) or keep the dataset order.
        drop_last: Drop the final incomplete batch. Default: False.
        seed: Seed of the loader's generator. Default: 0.
        mean: Per-channel mean subtracted after scaling to ``[0, 1]`` (uint8) — channel axis 1.
            Default: None (no centring).
        std: Per-channel standard deviation divided by. Default: None (no scaling).
        crop_padding: Random crop of the original size from the image zero-padded by this many
            pixels on every side (4 for CIFAR). Needs 4-D inputs. Default: 0 (no crop).
        flip: Random horizontal flip with probability 1/2. Needs 4-D inputs. Default: False.
        batch_transform: Optional hook ``(images, targets) -> (images, targets)`` applied after
            crop/flip and before normalisation, e.g. :func:`autoaugment_cifar10`,
            :func:`cutmix` or :func:`chain` of both. Default: None.
        resize: Bilinearly resize every batch to ``resize × resize`` pixels
            (``torchvision.transforms.v2.functional.resize``, no antialiasing) after all
            augmentation (crop/flip and ``batch_transform``), in the floating ``dtype`` and on
            the device the batches are made on, before normalisation. Deterministic: the
            loader's random draws and :meth:`state_dict` are the same as without it. Needs 4-D
            inputs; autoencoder targets are the resized inputs. Default: None (keep the size).
        rank: This process's rank. Default: 0.
        world_size: Number of processes sharing each global batch. Default: 1.
        device: Move the dataset there once (e.g. ``"cuda"``). Default: None (keep it where it is).
        dtype: Floating dtype of the returned inputs. Default: ``torch.float32``.

    Raises:
        ValueError: A bad argument (the message names it and the allowed range).
    """

    size_key, size_unit = "num_samples", "samples"

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_padding: int = 0,
        flip: bool = False,
        batch_transform: BatchTransform | None = None,
        resize: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if len(inputs) != len(targets):
            raise ValueError(
                f"inputs and targets must have the same length, got {len(inputs)} and "
                f"{len(targets)}"
            )
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size - 1}], got {rank}")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(
                f"batch_size must be a positive multiple of world_size={world_size}, "
                f"got {batch_size}"
            )
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if (crop_padding or flip) and inputs.dim() != 4:
            raise ValueError(
                f"crop_padding/flip need image inputs (N, C, H, W), got shape {tuple(inputs.shape)}"
            )
        if resize is not None:
            if not isinstance(resize, int) or isinstance(resize, bool) or resize < 1:
                raise ValueError(f"resize must be a positive integer or None, got {resize!r}")
            if inputs.dim() != 4:
                raise ValueError(
                    f"resize needs image inputs (N, C, H, W), got shape {tuple(inputs.shape)}"
                )
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")

        autoencoder = targets is inputs
        self.inputs = inputs.to(device) if device is not None else inputs
        self.targets = self.inputs if autoencoder else targets.to(self.inputs.device)
        self.autoencoder = autoencoder
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.crop_padding = crop_padding
        self.flip = flip
        self.batch_transform = batch_transform
        self.resize = resize
        self.rank = rank
        self.world_size = world_size
        self.dtype = dtype
        self._scale, self._shift = self._affine(mean, std)

        self._start_epochs(seed)

    # ------------------------------------------------------------------ normalisation
    def _affine(
        self, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> tuple[Tensor | float, Tensor | float]:
        """``x * scale + shift`` = ``(x / 255 - mean) / std`` (uint8) or ``(x - mean) / std``."""
        unit = 1.0 / 255.0 if self.inputs.dtype == torch.uint8 else 1.0
        if mean is None and std is None:
            return unit, 0.0
        dim = self.inputs.dim()
        shape = [1, -1, *[1] * (dim - 2)] if dim >= 2 else [-1]
        channels = self.inputs.shape[1] if dim >= 2 else 1
        mean_t = torch.as_tensor(mean if mean is not None else [0.0], dtype=torch.float64)
        std_t = torch.as_tensor(std if std is not None else [1.0], dtype=torch.float64)
        for label, value in (("mean", mean_t), ("std", std_t)):
            if value.numel() not in (1, channels):
                raise ValueError(f"{label} must have 1 or {channels} entries, got {value.numel()}")
        if (std_t <= 0).any():
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        scale = (unit / std_t).expand(channels).reshape(shape)
        shift = (-mean_t / std_t).expand(channels).reshape(shape)
        device = self.inputs.device
        return scale.to(device, self.dtype), shift.to(device, self.dtype)

    # ------------------------------------------------------------------ epoch bookkeeping
    def __len__(self) -> int:
        """Number of batches per epoch (the same on every rank)."""
        n = len(self.inputs)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _size(self) -> int:
        return len(self.inputs)

    def _draw_epoch(self) -> dict[str, Tensor]:
        """All random numbers of one epoch, drawn in a fixed order from the generator."""
        g = self._epoch_generator()
        n = len(self.inputs)
        draws: dict[str, Tensor] = {}
        draws["order"] = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.crop_padding:
            draws["offsets"] = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=g)
        if self.flip:
            draws["flips"] = torch.rand(n, generator=g) < 0.5
        if self.batch_transform is not None:
            draws["seeds"] = torch.randint(0, _MAX_SEED, (len(self), self.world_size), generator=g)
        return draws

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the remaining batches of the current epoch as ``(inputs, targets)``."""
        draws = self._draw_epoch()
        device = self.inputs.device
        order = draws["order"].to(device)
        offsets = draws["offsets"].to(device) if "offsets" in draws else None
        flips = draws["flips"].to(device) if "flips" in draws else None
        num_batches = len(self)
        if num_batches == 0:
            self._finish_epoch()
            return
        for b in range(self._batch, num_batches):
            start = b * self.batch_size
            stop = min(start + self.batch_size, len(self.inputs))
            local = torch.arange(start, stop, device=device).tensor_split(self.world_size)[
                self.rank
            ]
            x, y = self._make_batch(
                order[local],
                offsets[local] if offsets is not None else None,
                flips[local] if flips is not None else None,
                int(draws["seeds"][b, self.rank]) if "seeds" in draws else None,
            )
            self._handed_out(b)
            yield x, y

    def _make_batch(
        self, index: Tensor, offsets: Tensor | None, flips: Tensor | None, seed: int | None
    ) -> tuple[Tensor, Tensor]:
        x = self.inputs[index]
        if offsets is not None or flips is not None:
            x = self._crop_flip(x, offsets, flips)
        y = x if self.autoencoder else self.targets[index]
        if self.batch_transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                x, y = self.batch_transform(x, y)
        x = x.to(self.dtype)
        if self.resize is not None:
            x = _resize(x, self.resize)
        x = x * self._scale + self._shift
        return x, (x if self.autoencoder else y)

    def _crop_flip(self, x: Tensor, offsets: Tensor | None, flips: Tensor | None) -> Tensor:
        """Crop (after zero padding) and flip every image of ``x`` with one gather."""
        n, c, h, w = x.shape
        p = self.crop_padding
        if p:
            x = F.pad(x, (p, p, p, p))
        rows = torch.arange(h, device=x.device).expand(n, h)
        cols = torch.arange(w, device=x.device).expand(n, w)
        if flips is not None:
            cols = torch.where(flips[:, None], (w - 1) - cols, cols)
        if offsets is not None:
            rows = rows + offsets[:, :1]
            cols = cols + offsets[:, 1:]
        width = w + 2 * p
        pixel = (rows[:, :, None] * width + cols[:, None, :]).reshape(n, 1, h * w)
        flat = x.reshape(n, c, -1).gather(2, pixel.expand(n, c, h * w))
        return flat.reshape(n, c, h, w)

"""``data/loader.py``: the in-memory batch iterator (epochs, resumption, sharding, augmentation),
and ``resize``: image batches upsampled after augmentation (``dataset.resize``).

The fine-tuning preset (Table 6) feeds 32×32 CIFAR images to ImageNet models at 224×224; the
loader resizes every training and test batch after crop/flip/AutoAugment/CutMix, before
normalisation, and draws no randomness of its own (resume stays exact).
"""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from data.loader import PerSample, TensorLoader, autoaugment_cifar10, chain, cutmix
from data.registry import DatasetSplits
from data.synthetic import synthetic_classification, synthetic_regression
from harness.distributed import Workers
from harness.pipeline import build_data

pytestmark = pytest.mark.usefixtures("one_thread")


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
    """Each image is exactly one crop of its zero-padded original, flipped or not (all 81 offsets
    and both flips tried; random pixels make the match unique), and the draws vary."""
    x, y = synthetic_classification(12, (3, 10, 10), 2, seed=4)
    loader = TensorLoader(x, y, 12, crop_padding=4, flip=True, shuffle=False, seed=9)
    [(batch, labels)] = list(loader)
    assert batch.shape == (12, 3, 10, 10) and batch.dtype == torch.float32
    assert torch.equal(labels, y)
    draws = []
    for i in range(12):
        padded = F.pad(x[i], (4, 4, 4, 4))
        matches = []
        for top in range(9):
            for left in range(9):
                crop = padded[:, top : top + 10, left : left + 10]
                for flip in (False, True):
                    reference = crop.flip(-1) if flip else crop
                    if torch.allclose(batch[i], reference.float() / 255):
                        matches.append((top, left, flip))
        assert len(matches) == 1, (i, matches)
        draws += matches
    flips = [flip for _, _, flip in draws]
    assert any(flips) and not all(flips)
    assert len({(top, left) for top, left, _ in draws}) > 1


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


# -------------------------------------------------------------------------------- resize
CPU = Workers(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _splits(size: int = 6) -> DatasetSplits:
    """A CIFAR-like in-memory dataset: uint8 images, mean/std, crop (padding 2) and flip."""
    train = synthetic_classification(20, (3, size, size), 4, seed=0)
    test = synthetic_classification(10, (3, size, size), 4, seed=1)
    return DatasetSplits(
        "toy", train, test, 4, (3, size, size), mean=MEAN, std=STD, crop_padding=2, flip=True
    )


def _reference(batch: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)


def test_train_and_test_batches_equal_interpolated_unresized_batches():
    splits = _splits()
    hook = chain(autoaugment_cifar10(), cutmix(4))
    kwargs = dict(test_batch_size=4, batch_transform=hook, seed=3)
    plain = splits.loaders(8, **kwargs)
    resized = splits.loaders(8, resize=13, **kwargs)
    for loader_plain, loader_resized in zip(plain, resized):
        batches = list(zip(loader_plain, loader_resized))
        assert len(batches) == len(loader_plain) > 1
        for (x, y), (xr, yr) in batches:
            assert xr.shape == (len(x), 3, 13, 13) and xr.dtype == torch.float32
            assert torch.equal(yr, y)  # same samples, same CutMix labels
            # normalisation is per-channel affine, bilinear weights sum to 1: they commute
            torch.testing.assert_close(xr, _reference(x, 13))
    assert plain[0].state_dict()["generator"].equal(resized[0].state_dict()["generator"])


def test_resize_none_is_bit_identical_and_same_size_is_a_no_op():
    x, y = synthetic_classification(12, (3, 5, 5), 3, seed=2)
    expected = x.to(torch.float32) * (1 / 255)
    for resize in (None, 5):
        [(batch, labels)] = list(TensorLoader(x, y, 12, shuffle=False, resize=resize))
        assert torch.equal(batch, expected) and torch.equal(labels, y)
    kwargs = dict(crop_padding=2, flip=True, seed=4, mean=MEAN, std=STD)
    for a, b in zip(TensorLoader(x, y, 4, **kwargs), TensorLoader(x, y, 4, resize=None, **kwargs)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_resized_loader_resumes_exactly():
    x, y = synthetic_classification(30, (3, 6, 6), 5, seed=0)
    kwargs = dict(
        crop_padding=2, flip=True, seed=7, resize=9, batch_transform=autoaugment_cifar10()
    )
    reference = TensorLoader(x, y, 8, **kwargs)
    full = [b for _ in range(2) for b in reference]  # two epochs of 4 batches
    run = TensorLoader(x, y, 8, **kwargs)
    got = [next(iter(run))]
    resumed = TensorLoader(x, y, 8, **kwargs)
    resumed.load_state_dict(pickle.loads(pickle.dumps(run.state_dict())))
    got += list(resumed) + list(resumed)
    assert len(got) == len(full) == 8
    for (a, ya), (b, yb) in zip(got, full):
        assert a.shape[-2:] == (9, 9) and torch.equal(a, b) and torch.equal(ya, yb)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "224"])
def test_bad_resize_values_raise(bad):
    x, y = synthetic_classification(4, (3, 4, 4), 2)
    with pytest.raises(ValueError, match="resize must be a positive integer"):
        TensorLoader(x, y, 2, resize=bad)
    dataset = OmegaConf.create({"name": "synthetic", "num_train": 4, "num_test": 4, "resize": bad})
    trainer = OmegaConf.create({"batch_size": 2, "eval_batch_size": 2, "num_workers": 0})
    with pytest.raises(ValueError, match=r"^dataset\.resize must be a positive integer or null"):
        build_data(dataset, trainer, CPU, seed=0)


def test_resize_needs_in_memory_images():
    vectors = torch.rand(4, 7)
    with pytest.raises(ValueError, match="resize needs image inputs"):
        TensorLoader(vectors, vectors, 2, resize=8)
    folder = DatasetSplits("folders", torch.utils.data.TensorDataset(vectors), (), 2, (7,))
    with pytest.raises(ValueError, match="resize is only supported for in-memory data"):
        folder.loaders(2, resize=8)
    dataset = OmegaConf.create({"name": "synthetic", "input_shape": [7], "resize": 8})
    trainer = OmegaConf.create({"batch_size": 2, "eval_batch_size": 2, "num_workers": 0})
    with pytest.raises(ValueError, match=r"^dataset\.resize needs image inputs"):
        build_data(dataset, trainer, CPU, seed=0)

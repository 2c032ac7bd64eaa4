"""``resize``: in-memory image batches upsampled after augmentation (``dataset.resize``).

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

from data.loader import TensorLoader, autoaugment_cifar10, chain, cutmix
from data.registry import DatasetSplits
from data.synthetic import synthetic_classification
from harness.distributed import Workers
from harness.pipeline import build_data

pytestmark = pytest.mark.usefixtures("one_thread")

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


def test_harness_resizes_any_in_memory_dataset_for_a_model_of_that_size():
    import timm

    trainer = OmegaConf.create({"batch_size": 4, "eval_batch_size": 2, "num_workers": 0})
    options = {"name": "synthetic", "num_train": 8, "num_test": 4, "input_shape": [3, 8, 8]}
    data = build_data(OmegaConf.create({**options, "resize": 16}), trainer, CPU, seed=0)
    xb, _ = next(iter(data.train))
    xt, _ = next(iter(data.test))
    assert xb.shape == (4, 3, 16, 16) and xt.shape == (2, 3, 16, 16)
    # a ViT built for 16×16 inputs takes the resized batches; it refuses the 8×8 ones
    vit = timm.create_model(
        "vit_base_patch16_224",
        img_size=16,
        patch_size=8,
        embed_dim=8,
        depth=1,
        num_heads=1,
        num_classes=10,
    )
    assert vit(xb).shape == (4, 10)
    plain = build_data(OmegaConf.create(options), trainer, CPU, seed=0)
    with pytest.raises(AssertionError, match="doesn't match model"):
        vit(next(iter(plain.train))[0])


def test_finetune_preset_resizes_to_224(compose):
    assert compose().dataset.get("resize") is None  # other presets keep the data's size
    for overrides in ([], ["dataset=cifar100", "model=vit_b16"]):
        cfg = compose(["experiment=finetune", *overrides])
        assert cfg.group == "finetune" and cfg.dataset.resize == 224

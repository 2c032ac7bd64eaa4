"""``train.py`` on bad input: a wrong value, model, optimizer setting, config choice or data
path stops with one ``error:`` line and exit status 2, before any record is written; and the
examples in ``train.py``'s docstring compose."""

from __future__ import annotations

import pytest

import train
from harness.config import ConfigError, validate
from tests.repository import CONF
from tests.runs import one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIMIZERS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optimizer.lr=-1", "optimizer.lr"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("trainer.amp=fp8", "trainer.amp"),
        ("trainer.dist_timeout_s=0", "trainer.dist_timeout_s"),
        ("scale=smoke", "scale=smoke"),  # no experiment: nothing to scale
    ],
)
def test_bad_value_exits_2_with_one_line(cli, tiny, tmp_path, override, key):
    out = tmp_path / "runs"
    proc = cli([*tiny, override, "name=bad", f"out_root={out}"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert key in one_error_line(proc.stderr)
    assert not (out / "adhoc" / "bad" / "record.json").exists()


def test_model_that_cannot_take_the_inputs_exits_2_with_one_line(cli, tiny, tmp_path):
    """ResNet-20 (3 input channels) on one-channel images: one line naming model and dataset,
    before any record is written."""
    out = tmp_path / "runs"
    shape = [o for o in tiny if not o.startswith("dataset.input_shape=")]
    proc = cli([*shape, "dataset.input_shape=[1,8,8]", "name=bad", f"out_root={out}"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "resnet20 does not take the inputs of dataset synthetic (shape (1, 8, 8))" in line
    assert not (out / "adhoc" / "bad" / "record.json").exists()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["optimizer=eva", "optimizer.damping=0"], "damping"),
        (["optimizer=sgd", "optimizer.momentum=-1"], "momentum"),
    ],
)
def test_bad_optimizer_hyperparameter_exits_2_with_one_line(cli, tiny, tmp_path, overrides, key):
    proc = cli([*tiny, *overrides, f"out_root={tmp_path / 'runs'}"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert key in one_error_line(proc.stderr)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optimizer.lr=0", "optimizer.lr"),
        ("trainer.eval_interval=0", "trainer.eval_interval"),
        ("trainer.checkpoint_interval=-1", "trainer.checkpoint_interval"),
        ("trainer.log_interval=0", "trainer.log_interval"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("trainer.epochs=1.5", "trainer.epochs"),
        ("trainer.epochs=true", "trainer.epochs"),
        ("schedule.warmup_epochs=-1", "schedule.warmup_epochs"),
    ],
)
def test_validate_names_the_key(compose, override, key):
    with pytest.raises(ConfigError) as info:
        validate(compose([override]))
    assert str(info.value).startswith(key) and "\n" not in str(info.value)


def test_unknown_choice_lists_the_choices(cli, tmp_path):
    proc = cli(["optimizer=nope", f"out_root={tmp_path / 'runs'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "Could not find 'optimizer/nope'" in proc.stderr
    for choice in OPTIMIZERS:
        assert f"\t{choice}\n" in proc.stderr, choice


def test_missing_data_names_the_path(cli, tmp_path):
    missing = tmp_path / "nonexistent"
    args = ["dataset=cifar10", f"dataset.root={missing}", "logger.wandb=false"]
    proc = cli([*args, "trainer.device=cpu", f"out_root={tmp_path / 'runs'}"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert str(missing) in line and "cifar" in line


def test_usage_examples_in_the_docstring_compose(compose):
    """Every ``train.py ...`` example in train.py's docstring names configs that exist."""
    lines = [line for line in train.__doc__.splitlines() if " train.py " in line]
    examples = [line.split(" train.py ", 1)[1].split("#")[0].split() for line in lines]
    assert len(examples) >= 3
    for example in examples:
        # a sweep's first value stands for the sweep (compose takes one run's overrides)
        overrides = [arg.split(",")[0] for arg in example if "=" in arg]
        validate(compose(overrides))

"""The shared options (eva/options.py): one validated frozen dataclass behind the constructor
keywords of every preconditioner. Bad values per option are checked in
tests/eva/test_preconditioner.py."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

import eva
from eva.options import OPTION_NAMES, Options
from tests.helpers import build, make_model, registry_names, sgd


def test_defaults_are_the_documented_ones_and_frozen():
    options = Options()
    assert (options.damping, options.running_avg, options.kl_clip) == (0.03, 0.95, 0.001)
    assert (options.scaling, options.update_interval, options.stat_batch) == ("kl_clip", 1, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.damping = 1.0  # type: ignore[misc]
    assert OPTION_NAMES == {f.name for f in dataclasses.fields(Options)}


@pytest.mark.parametrize("name", registry_names())
def test_keywords_become_the_class_defaults_with_replacements(name):
    cls = eva.PRECONDITIONERS[name]
    model = make_model()
    pre = build(cls, model, sgd(model), damping=0.5, update_interval=3)
    assert pre.options == dataclasses.replace(cls.defaults, damping=0.5, update_interval=3)
    assert (pre.damping, pre.update_interval) == (0.5, 3)
    assert isinstance(pre.damping, float)


def test_option_attributes_are_read_only_but_enabled_toggles():
    model = make_model()
    pre = eva.Eva(model, sgd(model))
    with pytest.raises(AttributeError, match="damping"):
        pre.damping = 0.1  # type: ignore[misc]
    pre.enabled = False
    assert not pre.enabled and pre.options.enabled  # the option is the initial value


def test_config_values_are_accepted_as_hydra_passes_them():
    """``skip_layers`` from a YAML list arrives as an OmegaConf ListConfig; ints for floats."""
    model = make_model()
    skip = OmegaConf.create({"skip_layers": ["fc*"]}).skip_layers
    pre = eva.Eva(model, sgd(model), skip_layers=skip, damping=1, kl_clip=0)
    assert pre.options.skip_layers == ("fc*",)
    assert {layer.name for layer in pre.layers} == {"conv1", "conv2"}
    assert pre.damping == 1.0 and pre.kl_clip == 0.0


def test_running_sums_only_where_the_class_allows_them():
    model = make_model()
    assert eva.EvaS(model, sgd(model)).running_avg is None
    with pytest.raises(ValueError, match="running_avg"):
        eva.Eva(model, sgd(model), running_avg=None)

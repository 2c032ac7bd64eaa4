"""The ``torch.profiler`` ranges of a step and of the hooks (eva/profiling.py): every name shows in
a profiled step, and none is entered when no profiler records."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import eva
from eva import profiling
from tests.helpers import forward_backward, image_batches, make_model, registry_names, sgd


def profiled_ranges(name: str) -> set[str]:
    """The eva range names in a profile of the second training step (the first fills the state)
    of registered preconditioner ``name``."""
    model = make_model()
    optimizer = sgd(model)
    pre = eva.PRECONDITIONERS[name](model, optimizer, update_interval=1)
    first, second = image_batches(2)
    forward_backward(model, first)
    pre.step()
    optimizer.step()
    optimizer.zero_grad()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward_backward(model, second)
        pre.step()
    return {event.name for event in prof.events()} & set(profiling.RANGES)


@pytest.fixture(scope="module")
def ranges() -> dict[str, set[str]]:
    return {name: profiled_ranges(name) for name in registry_names()}


def test_every_step_shows_the_step_its_state_update_and_its_equation(ranges):
    for name, seen in ranges.items():
        assert {profiling.STEP, profiling.UPDATE_STATE, profiling.PRECONDITION} <= seen, name


def test_hook_ranges_where_statistics_are_captured(ranges):
    for name, seen in ranges.items():
        hooks = {profiling.FORWARD_HOOKS, profiling.REDUCE_STATISTICS}
        assert (hooks <= seen) == bool(eva.PRECONDITIONERS[name].statistics_needed), name
    assert profiling.BACKWARD_HOOKS in ranges["eva"]  # b̄ read in the output-gradient hook


def test_the_registry_shows_every_range_name(ranges):
    assert set().union(*ranges.values()) == set(profiling.RANGES)
    assert profiling.GRADIENT_STATISTICS in ranges["shampoo"]
    assert {profiling.SCALING, profiling.WRITE_BACK} <= ranges["kfac"]  # the generic path
    assert profiling.WRITE_BACK not in ranges["eva"]  # in place: all of it is "precondition"


def test_no_range_without_a_profiler():
    assert not torch.autograd._profiler_enabled()
    assert not isinstance(profiling.profile_range(profiling.STEP), torch.profiler.record_function)
    with profile(activities=[ProfilerActivity.CPU]):
        assert isinstance(profiling.profile_range(profiling.STEP), torch.profiler.record_function)

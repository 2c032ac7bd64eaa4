"""The interface every preconditioner shares (eva/preconditioner.py): reduction to torch.optim when
disabled, validation of hyper-parameters, model and optimizer, state dicts, class defaults, loss
scaling.

Every test that concerns all algorithms iterates ``eva.PRECONDITIONERS``, so classes added to the
registry are covered automatically; keyword arguments a class does not accept are left out
(``inspect.signature``).
"""

from __future__ import annotations

import copy
import io
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import eva
from tests.helpers import (
    NAMES,
    STAT_NAMES,
    TinyMLP,
    accepted_kwargs,
    assert_params_equal,
    build,
    copy_model,
    forward_backward,
    grads,
    image_batches,
    make_model,
    sgd,
    train_steps,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only cost time


# ---------------------------------------------------------------------------------------------
# Reduction to torch.optim
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_disabled_equals_plain_sgd(name):
    cls = eva.PRECONDITIONERS[name]
    batches = image_batches(4)
    model = make_model()
    reference = copy_model(model)

    optimizer = sgd(model)
    pre = build(cls, model, optimizer, enabled=False, update_interval=1)
    train_steps(model, optimizer, pre, batches)
    assert all(not pending for pending in pre.capture.pending.values())

    train_steps(reference, sgd(reference), None, batches)
    assert_params_equal(model, reference)


@pytest.mark.parametrize("name", NAMES)
def test_disabling_mid_run_stops_all_effects(name):
    cls = eva.PRECONDITIONERS[name]
    batches = image_batches(6)
    model = make_model()
    optimizer = sgd(model)
    pre = build(cls, model, optimizer, update_interval=1)

    changed = False
    for batch in batches[:3]:
        optimizer.zero_grad()
        forward_backward(model, batch)
        raw = grads(model)
        pre.step()
        changed |= any(not torch.equal(raw[n], p.grad) for n, p in model.named_parameters())
        scaled = pre.scaling is not None and not (pre.scaling == "kl_clip" and pre.kl_clip is None)
        assert (pre.scale_factor is not None) == scaled  # the step's scaling factor is kept
        optimizer.step()
    assert changed, "the preconditioner had no effect while enabled"

    reference = copy_model(model)
    ref_optimizer = sgd(reference)
    ref_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # no shared buffers

    pre.enabled = False
    for batch in batches[3:]:
        optimizer.zero_grad()
        forward_backward(model, batch)
        assert all(not pending for pending in pre.capture.pending.values())
        raw = grads(model)
        pre.step()
        for n, p in model.named_parameters():
            assert torch.equal(raw[n], p.grad), n
        assert pre.scale_factor is None  # nothing scaled
        optimizer.step()
    train_steps(reference, ref_optimizer, None, batches[3:])
    assert_params_equal(model, reference)


@pytest.mark.parametrize("name", STAT_NAMES)
def test_disabling_between_backward_and_step_discards_statistics(name):
    """Toggling ``enabled`` after backward equals toggling it before the forward."""
    cls = eva.PRECONDITIONERS[name]
    batches = image_batches(4)

    def run(toggle_after_backward: bool) -> nn.Module:
        model = make_model()
        optimizer = sgd(model)
        pre = build(cls, model, optimizer, update_interval=1)
        for i, batch in enumerate(batches):
            optimizer.zero_grad()
            pre.enabled = not (i == 2 and not toggle_after_backward)
            forward_backward(model, batch)
            pre.enabled = i != 2
            pre.step()
            optimizer.step()
        return model

    assert_params_equal(run(True), run(False))


@pytest.mark.parametrize("name", NAMES)
def test_a_first_step_without_statistics_says_the_hooks_did_not_run(name):
    """A model trained in eval mode never runs the statistics hooks: a method that needs them
    stops at its first step with one line rather than leave every gradient as it is; a method
    that reads only the gradients preconditions as usual."""
    cls = eva.PRECONDITIONERS[name]
    model = make_model()
    pre = build(cls, model, sgd(model), update_interval=1)
    model.eval()
    forward_backward(model, image_batches(1)[0])
    before = grads(model)
    if cls.statistics_needed:
        with pytest.raises(RuntimeError, match="statistics hooks did not run"):
            pre.step()
        assert all(torch.equal(g, grads(model)[n]) for n, g in before.items())
    else:
        pre.step()
        assert any(not torch.equal(g, grads(model)[n]) for n, g in before.items())


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
BAD = [
    ("damping", 0), ("damping", -1), ("damping", math.nan), ("damping", math.inf),
    ("running_avg", 0), ("running_avg", 1.5), ("running_avg", -0.5), ("running_avg", math.nan),
    ("kl_clip", -0.1), ("kl_clip", math.nan),
    ("scaling", "bogus"),
    ("update_interval", 0), ("update_interval", 1.5), ("update_interval", -2),
    ("stat_batch", 0), ("stat_batch", -1),
    ("conv_factors", "x"),
]  # fmt: skip
BAD_CASES = [
    pytest.param(name, param, value, id=f"{name}-{param}={value}")
    for name in NAMES
    for param, value in BAD
    if param in accepted_kwargs(eva.PRECONDITIONERS[name])
]


@pytest.mark.parametrize("name, param, value", BAD_CASES)
def test_bad_hyperparameter_raises_naming_it(name, param, value):
    model = make_model()
    with pytest.raises(ValueError, match=re.escape(param)):
        eva.PRECONDITIONERS[name](model, sgd(model), **{param: value})


@pytest.mark.parametrize("name", NAMES)
def test_bad_model_or_optimizer_raises(name):
    cls = eva.PRECONDITIONERS[name]
    bn_only = nn.Sequential(nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="supported layer"):
        cls(bn_only, sgd(bn_only))
    mlp = make_model(TinyMLP)
    with pytest.raises(ValueError, match="supported layer"):
        build(cls, mlp, sgd(mlp), skip_layers=["fc*"])
    with pytest.raises(ValueError, match="optimizer"):
        cls(mlp, list(mlp.parameters()))
    cls(mlp, sgd(mlp))  # defaults are valid


# ---------------------------------------------------------------------------------------------
# state_dict round trip
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_identically(name):
    cls = eva.PRECONDITIONERS[name]
    batches = image_batches(6, seed=4)
    kwargs = {"update_interval": 2}

    model = make_model()
    resumed = copy_model(model)
    optimizer = sgd(model)
    train_steps(model, optimizer, build(cls, model, optimizer, **kwargs), batches)

    opt_1 = sgd(resumed)
    pre_1 = build(cls, resumed, opt_1, **kwargs)
    train_steps(resumed, opt_1, pre_1, batches[:3])
    buffer = io.BytesIO()
    torch.save(
        {"model": resumed.state_dict(), "optimizer": opt_1.state_dict(), "pre": pre_1.state_dict()},
        buffer,
    )
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    fresh = make_model(seed=99)
    fresh.load_state_dict(checkpoint["model"])
    opt_2 = sgd(fresh)
    opt_2.load_state_dict(checkpoint["optimizer"])
    pre_2 = build(cls, fresh, opt_2, **kwargs)
    pre_2.load_state_dict(checkpoint["pre"])
    train_steps(fresh, opt_2, pre_2, batches[3:])

    assert_params_equal(fresh, model)


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_with_other_layers_raises(name):
    cls = eva.PRECONDITIONERS[name]
    model = make_model()
    optimizer = sgd(model)
    pre = build(cls, model, optimizer, update_interval=1)
    train_steps(model, optimizer, pre, image_batches(1))
    other = build(cls, model, optimizer, update_interval=1, skip_layers=["fc2"])
    with pytest.raises(ValueError, match="layers"):
        other.load_state_dict(pre.state_dict())
    smaller = make_model(TinyMLP)
    with pytest.raises(ValueError, match="layers"):
        build(cls, smaller, sgd(smaller)).load_state_dict(pre.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_a_type_error(name):
    model = make_model()
    with pytest.raises(TypeError, match="dampnig"):
        eva.PRECONDITIONERS[name](model, sgd(model), dampnig=0.1)


def test_class_defaults_override_shared_defaults():
    model = make_model()
    kfac, foof = eva.KFAC(model, sgd(model)), eva.FOOF(model, sgd(model))
    assert (kfac.update_interval, kfac.running_avg, kfac.scaling) == (10, 0.95, "kl_clip")
    assert (foof.update_interval, foof.running_avg) == (50, 1.0)
    assert eva.EvaF(model, sgd(model)).scaling == "kl_norm"
    assert eva.EvaS(model, sgd(model)).running_avg is None
    assert eva.KFAC(model, sgd(model), update_interval=3).update_interval == 3


@pytest.mark.parametrize("name", ["eva", "kfac"])
def test_loss_scale_is_divided_out_of_statistics(name):
    """fp16-style loss scaling: backward of S·loss, unscaled parameter gradients and
    ``step(grad_scale=S)`` give the same update as the unscaled loss."""
    results = []
    for scale in (None, 1024.0):
        model = make_model()
        optimizer = sgd(model)
        pre = eva.PRECONDITIONERS[name](model, optimizer, update_interval=1)
        for x, y in image_batches(3):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            (loss * (scale or 1.0)).backward()
            if scale is not None:
                for p in model.parameters():
                    p.grad.div_(scale)
            pre.step(grad_scale=scale)
            optimizer.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_statistics_are_declared_where_defined(name):
    """``uses_gradient_statistics`` is explicit (the step reads the flag, not the class body):
    every registered class that defines ``gradient_statistics`` declares it, and no other."""
    cls = eva.PRECONDITIONERS[name]
    defines = cls.gradient_statistics is not eva.Preconditioner.gradient_statistics
    assert cls.uses_gradient_statistics == defines

"""CUDA: the same numbers as on the CPU, no host synchronisation in a step, float32 statistics
under bf16 autocast, and ``torch.compile`` (inductor, Triton kernels) with the hooks.

Skipped where no CUDA device is present (CI has none); run on a GPU machine with
``python -m pytest --noconftest tests/integration/test_cuda.py`` (the file needs no Hydra
fixtures).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

import eva
from tests.helpers import (
    STABLE_KWARGS,
    BatchNormCNN,
    TinyCNN,
    assert_runs_close,
    build,
    copy_model,
    image_batches,
    make_model,
    preconditioned_grads,
    registry_names,
    sgd,
    train_steps,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
EVA_FAMILY = ["eva", "eva_f", "eva_s"]


@pytest.fixture
def exact_float32() -> Iterator[None]:
    """No TF32 in convolutions or matrix products, so float32 results are comparable."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


@pytest.mark.parametrize("name", registry_names())
def test_cuda_run_equals_cpu_run(name: str) -> None:
    """Three float64 steps on the GPU land where the same three steps on the CPU land."""
    cls = eva.PRECONDITIONERS[name]
    kwargs = {"update_interval": 1, **STABLE_KWARGS.get(name, {})}
    batches = image_batches(3)
    cpu = make_model()
    gpu = copy_model(cpu).to(CUDA)
    for model, data in ((cpu, batches), (gpu, [(x.to(CUDA), y.to(CUDA)) for x, y in batches])):
        optimizer = sgd(model)
        train_steps(model, optimizer, build(cls, model, optimizer, **kwargs), data)
    for (key, want), got in zip(cpu.state_dict().items(), gpu.state_dict().values(), strict=True):
        assert got.device.type == "cuda", key
        torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-11, msg=key)


@pytest.mark.parametrize("builder", [TinyCNN, BatchNormCNN])
@pytest.mark.parametrize("name", EVA_FAMILY)
def test_step_makes_no_host_synchronisation(name: str, builder: type) -> None:
    """Forward and backward with the hooks, ``preconditioner.step()`` and the optimizer step
    queue GPU work only: CUDA's sync debug mode raises on any device-to-host wait (with
    BatchNorm: Eva's b̄ = 0 bookkeeping and skipped ā too)."""
    torch.manual_seed(0)
    model = builder().to(CUDA)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)
    pre = eva.PRECONDITIONERS[name](model, optimizer, update_interval=1)
    x = torch.randn(8, 3, 6, 6, device=CUDA)
    y = torch.randint(0, 3, (8,), device=CUDA)
    for step in range(3):  # the first step creates the states; later ones update them
        optimizer.zero_grad()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            F.cross_entropy(model(x), y).backward()
            pre.step()
            optimizer.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        assert all(torch.isfinite(p).all() for p in model.parameters()), step


@pytest.mark.parametrize("name", ["eva", "eva_f", "kfac"])
def test_bf16_autocast_keeps_statistics_in_float32(name: str, exact_float32: None) -> None:
    """Under bf16 autocast the layers run in bf16 but the statistics are taken in float32, and
    the preconditioned gradient stays close to the float32 run's."""
    torch.manual_seed(0)
    x = torch.randn(16, 3, 6, 6, device=CUDA)
    y = torch.randint(0, 3, (16,), device=CUDA)
    runs = []
    for autocast in (False, True):
        torch.manual_seed(0)
        model = TinyCNN().to(CUDA)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        pre = eva.PRECONDITIONERS[name](model, optimizer, update_interval=1)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            F.cross_entropy(model(x), y).backward()
        pre.step()
        for layer_state in pre.state.values():
            for key, value in layer_state.items():
                assert value.dtype == torch.float32, (key, value.dtype)
        runs.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    exact, mixed = runs
    assert mixed.dtype == torch.float32
    cosine = F.cosine_similarity(exact, mixed, dim=0)
    assert cosine > 0.999, cosine


@pytest.mark.parametrize("name", ["eva", "eva_s", "kfac"])
def test_inductor_compiled_model_gives_eager_gradients(name: str, exact_float32: None) -> None:
    """``torch.compile`` with the default backend (inductor, Triton kernels on the GPU) keeps the
    hooks: three steps give the eager run's preconditioned gradients."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 3, 6, 6, generator=gen).to(CUDA), torch.randint(0, 3, (8,)).to(CUDA))
        for _ in range(3)
    ]
    runs = []
    for wrap in (None, torch.compile):
        torch.manual_seed(0)
        runs.append(preconditioned_grads(TinyCNN().to(CUDA), name, batches, wrap))
    assert_runs_close(runs[1], runs[0], rtol=1e-4, atol=1e-6)

"""Phase times come from torch.profiler ranges, with no patching of the library."""

from __future__ import annotations

import time

import pytest
import torch

from scripts.bench.profile import OTHER, PHASES, STEP_PARTS, phase_times, profile_phases
from scripts.bench.workloads import workload

CPU = torch.device("cpu")


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def fake_step() -> None:
    """A step that opens the benchmark's and the library's ranges itself."""
    with torch.profiler.record_function("bench.step"):
        with torch.profiler.record_function("forward"):
            for _ in range(3):  # a hook per layer: three calls count as one phase
                with torch.profiler.record_function("eva.forward_hooks"):
                    busy(0.001)
        with torch.profiler.record_function("eva.step"):
            with torch.profiler.record_function("eva.precondition"):
                busy(0.004)
            busy(0.002)  # outside every named part: "other"
        with torch.profiler.record_function("not.a.phase"):
            busy(0.001)


def test_phase_times_per_step_from_the_ranges() -> None:
    cpu_ms, device_ms, _ = phase_times(fake_step, steps=2, device=CPU)
    assert device_ms is None
    assert set(cpu_ms) == {"bench.step", "forward", "eva.forward_hooks", "eva.step",
                           "eva.precondition", OTHER}  # fmt: skip
    assert cpu_ms["eva.forward_hooks"] >= 3.0 and cpu_ms["eva.precondition"] >= 4.0
    assert cpu_ms[OTHER] == pytest.approx(cpu_ms["eva.step"] - cpu_ms["eva.precondition"])
    assert cpu_ms[OTHER] >= 2.0
    assert cpu_ms["bench.step"] >= cpu_ms["forward"] + cpu_ms["eva.step"]


def test_phase_names_are_one_constant() -> None:
    names = [name for name, _ in PHASES]
    assert len(set(names)) == len(names) and names[0] == "bench.step"
    assert STEP_PARTS == (
        "eva.reduce_statistics", "eva.gradient_statistics", "eva.update_state",
        "eva.gather_gradients", "eva.precondition", "eva.scaling", "eva.write_back",
    )  # fmt: skip


def test_profile_of_the_real_preconditioner(tmp_path) -> None:
    """Eva on ResNet-20: its own ``eva.*`` ranges appear in the profile (they live inside
    ``Preconditioner.step`` and its hooks)."""
    work = workload("resnet20", batch=2, imagenet_batch=2, image_size=8)
    initial = work.build(0)
    batches = work.batch_pool(0, CPU, 2)
    prof = profile_phases(
        work, initial, batches, "eva", device=CPU, warmup=1, steps=1, mfac_grads=4,
        table_path=tmp_path / "table.txt",
    )  # fmt: skip
    assert prof["sgd_ms"]["bench.step"] > 0 and prof["algo_ms"]["backward"] > 0
    assert (tmp_path / "table.txt").read_text().startswith("eva on resnet20")
    if "eva.step" not in prof["algo_ms"]:
        pytest.skip("Preconditioner.step opens no eva.* ranges yet (they come with the refactor "
                    "of eva/preconditioner.py)")  # fmt: skip
    for phase in ("eva.forward_hooks", "eva.backward_hooks", "eva.precondition"):
        assert prof["algo_ms"][phase] > 0, phase
    assert not any(name.startswith("eva.") for name in prof["sgd_ms"])

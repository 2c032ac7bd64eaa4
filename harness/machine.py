"""What a measurement ran on: the one description of the host, its device and the software.

Used by run records (``harness/records.py``), the benchmark (``scripts/bench``) and the demo.
torch is imported where a device is described, not with the module: ``harness.records`` (and so
``python -m scripts.reproduce``, which only reads and writes records) does not load it.
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str | None) -> str:
    """The accelerator's name (e.g. ``NVIDIA H200``) for a CUDA device, else ``CPU``."""
    import torch

    device = torch.device(device or "cpu")
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def device_tag(device: torch.device | str) -> str:
    """``cpu`` or e.g. ``cuda-nvidia-h100-80gb-hbm3``: a file-name-safe name of the device."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    name = device_name(device).lower()
    return "cuda-" + "".join(c if c.isalnum() else "-" for c in name).strip("-")


def machine_description(device: torch.device | str | None = None) -> dict[str, Any]:
    """The device, CPU, core and thread counts, platform and software versions.

    Args:
        device: The device the measurement runs on (default ``cpu``).

    Returns:
        ``device``, ``device_name``, ``cpu``, ``cpu_count``, ``torch_threads``, ``torch``,
        ``cuda`` (None off CUDA), ``python``, ``platform`` and ``machine`` (the architecture).
    """
    import torch

    device = torch.device(device or "cpu")
    return {
        "device": str(device),
        "device_name": device_name(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }

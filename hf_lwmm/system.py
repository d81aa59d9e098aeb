"""What this process may use of the machine: CPU cores, and the device the merge math runs on.

Layering: a bottom module (imports only :mod:`hf_lwmm.errors`; torch when a device is resolved).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hf_lwmm.errors import RunOptionError

if TYPE_CHECKING:
    import torch


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. under ``taskset`` or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    """The torch device named ``name``, checked to exist on this machine; ``auto``: the accelerator torch finds
    (CUDA, MPS, XPU…, see ``torch.accelerator``), else the CPU."""
    import torch

    if name == "auto":
        return torch.accelerator.current_accelerator(check_available=True) or torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise RunOptionError("device", f"{name!r}: not a torch device (auto, cpu, cuda, cuda:1, …)") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None) if device.type != "mps" else torch.backends.mps
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise RunOptionError("device", f"{name!r}: no {device.type} device on this machine (use cpu, or auto to pick what is there)")
    count = getattr(backend, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise RunOptionError("device", f"{name!r}: this machine has {count()} {device.type} device(s)")
    return device

"""What this process may use of the machine: CPU cores, and the device the merge math runs on.

Layering: a bottom module (imports only :mod:`hf_lwmm.errors`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from hf_lwmm.errors import RunOptionError


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. under ``taskset`` or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    """``auto`` lets accelerate pick the accelerator (CUDA, MPS, XPU…) or the CPU; a named one must exist."""
    if name == "auto":
        from accelerate import PartialState

        return PartialState(cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available())).device
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunOptionError("device", f"{name!r}: not a torch device (auto, cpu, cuda, cuda:1, …)") from None
    available: dict[str, Callable[[], bool]] = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if device.type in available and not available[device.type]():
        raise RunOptionError("device", f"{name!r}: no such device on this machine (use auto or cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RunOptionError("device", f"{name!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    return device

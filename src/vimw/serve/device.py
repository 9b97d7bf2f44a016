"""Where a server computes: ``cpu``, ``cuda`` or ``cuda:N``, checked before any model loads.

The backbone, the plug-ins and the heads live on that device; decoded images go there
per batch and the probabilities come back to the CPU, where the answers are written.
"""

from __future__ import annotations

import re

import torch

from vimw.errors import VimwError
from vimw.serve.defaults import DEVICE_PATTERN


def resolve_device(name: str) -> torch.device:
    """``name`` as a device this process can use; a clear error for a malformed name or a missing GPU."""
    if not isinstance(name, str) or not re.fullmatch(DEVICE_PATTERN, name):
        raise VimwError(f"device must be cpu, cuda or cuda:N, got {name!r}")
    device = torch.device(name)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise VimwError(f"device {name!r} was asked for, but this torch ({torch.__version__}) sees no CUDA GPU "
                        "(use --device cpu)")
    count = torch.cuda.device_count()
    if (device.index or 0) >= count:
        raise VimwError(f"device {name!r} was asked for, but this machine has {count} CUDA device(s) "
                        f"(cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", device.index or 0)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: timings need it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_stats(device: torch.device) -> dict:
    """The device and, on CUDA, the memory torch's allocator holds for tensors (MiB; the CUDA context is extra)."""
    out: dict = {"device": str(device)}
    if device.type == "cuda":
        out.update(cuda_memory_allocated_mb=round(torch.cuda.memory_allocated(device) / 2**20, 1),
                   cuda_max_memory_allocated_mb=round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
                   cuda_max_memory_reserved_mb=round(torch.cuda.max_memory_reserved(device) / 2**20, 1))
    return out


__all__ = ["memory_stats", "resolve_device", "synchronize"]

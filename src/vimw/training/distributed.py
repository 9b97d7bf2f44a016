"""Multi-process training through PyTorch's own launcher (torchrun sets the env vars)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> bool:
    """Join the process group torchrun describes; ``False`` when running single-process."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return True


def world_size() -> int:
    """The number of processes in the run (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Whether this process writes files and prints (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (a no-op without torchrun)."""
    if world_size() > 1:
        dist.barrier()


def shard(indices: torch.Tensor, rank_: int, world: int) -> torch.Tensor:
    """This rank's share, padded by wrapping so every rank runs the same number of steps."""
    if world <= 1:
        return indices
    per_rank = -(-len(indices) // world)
    padded = torch.cat([indices, indices[: per_rank * world - len(indices)]])
    return padded[rank_::world]


def average(value: float) -> float:
    """The mean of a number over the processes (the number itself without torchrun)."""
    if world_size() <= 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return (tensor / world_size()).item()

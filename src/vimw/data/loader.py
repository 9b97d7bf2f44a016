"""Batching in-memory ImageSets, and sharding indices across processes.

The data already sit in memory as uint8 tensors, so a ``torch.utils.data.DataLoader``
with workers would only add process start-up and copies; slicing is enough.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from vimw.data.imageset import ImageSet
from vimw.errors import DataError


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches ``iterate_batches`` yields for ``n`` images."""
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_batches(
    imageset: ImageSet,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images uint8, targets int64)`` batches of ``imageset``.

    With ``shuffle``, the order comes from ``generator``, else from ``seed`` (reproducible),
    else from torch's global RNG. ``drop_last`` drops a final batch smaller than
    ``batch_size`` (useful with batch norm).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    if generator is not None and seed is not None:
        raise DataError("give either seed or generator, not both")
    n = len(imageset)
    if shuffle:
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    for batch in range(num_batches(n, batch_size, drop_last)):
        index = order[batch * batch_size : (batch + 1) * batch_size]
        yield imageset.images.index_select(0, index), imageset.targets.index_select(0, index)


def shard_indices(n: int, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s share of ``range(n)``, padded like ``DistributedSampler``.

    Indices wrap around to the start so every rank gets ``ceil(n / world_size)`` of them:
    equal counts keep collective ops (all-reduce per step) in lock-step; a few images
    are then seen twice per epoch. Rank r takes every ``world_size``-th index from r.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if n < 0:
        raise DataError(f"n must be >= 0, got {n}")
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    per_rank = -(-n // world_size)
    padded = torch.arange(per_rank * world_size) % n
    return padded[rank::world_size]

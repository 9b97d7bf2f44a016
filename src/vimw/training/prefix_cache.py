"""Reuse of the frozen backbone prefix across epochs (issue 6, item 3).

When plug-in modules attach only from block ``start`` on, everything before it (the
preprocessing, the stem and blocks ``0 .. start-1``) is the same function of an image
in every epoch: it is computed once, under ``torch.inference_mode``, and kept in
memory. Without a plug-in (linear probe) the whole backbone is the prefix and the
cache holds pooled features.

- Memory-backed, with a byte limit: storage for ``min(n, max_bytes // item_bytes)``
  images of a split is allocated on first use; images beyond it are computed on the
  fly every time (never an error, never over the limit).
- Keyed by the image tensor (``ImageSet.images``) and the image's index in it; the
  cache holds a reference to that tensor, so its memory can't be reused by another
  tensor while cached values point at it. Image tensors are read-only in vimw.
- Valid only while the backbone is frozen (checked on every use) and for image-level
  heads (dense heads read intermediate blocks); ``TaskModel.forward_cached`` refuses
  otherwise.

Values equal the uncached computation: the same kernels run on the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vimw.backbones.base import Backbone
from vimw.errors import VimwError

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB


@dataclass
class _Slot:
    images: torch.Tensor  # held so its storage (the key) stays alive
    capacity: int = 0
    storage: torch.Tensor | None = None
    filled: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))


class PrefixCache:
    """Hidden states after block ``start - 1`` (or pooled features), per image."""

    def __init__(self, backbone: Backbone, start: int, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if not 0 < start <= backbone.num_blocks:
            raise VimwError(f"a prefix cache needs 0 < start <= {backbone.num_blocks}, got {start}")
        self.backbone = backbone
        self.start = int(start)
        self.pooled = self.start == backbone.num_blocks
        self.max_bytes = int(max_bytes)
        self._slots: dict[tuple, _Slot] = {}
        self.hits = 0
        self.misses = 0

    # -- bookkeeping --------------------------------------------------------------------
    @property
    def bytes_used(self) -> int:
        """The memory the cached hidden states take."""
        return sum(s.storage.numel() * s.storage.element_size() for s in self._slots.values() if s.storage is not None)

    def clear(self) -> None:
        """Forget every cached hidden state (and the hit counts)."""
        self._slots.clear()
        self.hits = self.misses = 0

    def _slot(self, images: torch.Tensor) -> _Slot:
        key = (images.data_ptr(), tuple(images.shape), images.dtype)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(images)
        return slot

    def _allocate(self, slot: _Slot, sample: torch.Tensor) -> None:
        item_bytes = max(1, sample[0].numel() * sample.element_size())
        free = max(0, self.max_bytes - self.bytes_used)
        slot.capacity = min(len(slot.images), free // item_bytes)
        # In the values' memory format (channels-last feature maps stay channels-last).
        channels_last = sample.dim() == 4 and sample.is_contiguous(memory_format=torch.channels_last)
        slot.storage = torch.empty((slot.capacity, *sample.shape[1:]), dtype=sample.dtype, device=sample.device,
                                   memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        slot.filled = torch.zeros(slot.capacity, dtype=torch.bool)

    # -- computing ---------------------------------------------------------------------
    def compute(self, images: torch.Tensor) -> torch.Tensor:
        """The prefix of a batch of raw images, in inference mode (no autograd at all)."""
        backbone = self.backbone
        device = next(backbone.parameters()).device
        with torch.inference_mode():
            pixels = backbone.preprocess(images.to(device))
            hidden = backbone.forward_blocks(backbone.stem(pixels), None, 0, self.start)
            return backbone.pool(hidden) if self.pooled else hidden

    def fetch(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The prefix of ``images[index]``: cached where possible, computed (and stored) otherwise."""
        index = torch.as_tensor(index, dtype=torch.long).cpu()
        slot = self._slot(images)
        if slot.storage is None:
            values = self.compute(images[index])
            self._allocate(slot, values)
            self._store(slot, index, values)
            self.misses += len(index)
            return values.clone()  # a normal tensor autograd can save
        inside = index < slot.capacity
        hit = torch.zeros(len(index), dtype=torch.bool)
        hit[inside] = slot.filled[index[inside]]
        if bool(hit.all()):
            self.hits += len(index)
            return slot.storage[index.to(slot.storage.device)]  # indexing keeps the memory format
        miss = ~hit
        values = self.compute(images[index[miss]])
        self._store(slot, index[miss], values)
        self.hits += int(hit.sum())
        self.misses += int(miss.sum())
        if not bool(hit.any()):
            return values.clone()
        out = torch.empty((len(index), *values.shape[1:]), dtype=values.dtype, device=values.device)
        out[hit.to(out.device)] = slot.storage.index_select(0, index[hit].to(out.device))
        out[miss.to(out.device)] = values
        return out

    def _store(self, slot: _Slot, index: torch.Tensor, values: torch.Tensor) -> None:
        keep = index < slot.capacity
        if bool(keep.any()):
            with torch.no_grad():
                slot.storage.index_copy_(0, index[keep].to(values.device), values[keep.to(values.device)])
            slot.filled[index[keep]] = True


def prefix_start(backbone: Backbone, plugin) -> int:
    """The first block a plug-in touches (``num_blocks`` without one: a linear probe)."""
    if plugin is None:
        return backbone.num_blocks
    return backbone.first_block_with(list(plugin.bypass))


__all__ = ["DEFAULT_MAX_BYTES", "PrefixCache", "prefix_start"]

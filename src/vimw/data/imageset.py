"""``ImageSet``: the one in-memory container of images and targets every vimw part uses.

Images are kept as uint8 ``N x C x H x W`` (C in {1, 3}) at their native resolution:
resizing, grey->RGB and normalisation belong to the backbone's ``Preprocess``, which
runs batched on the fly. Keeping uint8 makes a 60k-image set weigh 47 MB, not 188 MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vimw.errors import DataError

IndexLike = torch.Tensor | np.ndarray | Sequence[int]


@dataclass
class ImageSet:
    """Images with one class index each (classification) or one class per pixel (masks).

    ``targets`` is int64, either ``N`` class indices or ``N x H x W`` masks aligned with
    the images; every target lies in ``[0, len(class_names))``. Tensors may be shared
    with a per-process cache: treat them as read-only (``subset`` returns copies).
    """

    images: torch.Tensor
    targets: torch.Tensor
    class_names: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        _check_images(self.images, self.name)
        _check_class_names(self.class_names, self.name)
        _check_targets(self.targets, self.images, self.class_names, self.name)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageSet(name={self.name!r}, images={tuple(self.images.shape)}, "
            f"targets={tuple(self.targets.shape)}, classes={len(self.class_names)})"
        )

    @property
    def num_classes(self) -> int:
        """The number of class names (for dense kinds: of pixel classes)."""
        return len(self.class_names)

    @property
    def is_dense(self) -> bool:
        """True when targets are per-pixel masks rather than one label per image."""
        return self.targets.dim() == 3

    def subset(self, indices: IndexLike, name: str | None = None) -> "ImageSet":
        """The images at ``indices`` (copied, in the given order), same class names."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageSet(
            images=self.images.index_select(0, index),
            targets=self.targets.index_select(0, index),
            class_names=self.class_names,
            name=self.name if name is None else name,
        )


def _where(name: str) -> str:
    return f"dataset {name!r}" if name else "dataset"


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor):
        raise DataError(f"{_where(name)}: images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise DataError(f"{_where(name)}: images must be uint8 (0..255), got {images.dtype}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise DataError(
            f"{_where(name)}: images must be shaped N x C x H x W with C in (1, 3), "
            f"got {tuple(images.shape)}"
        )


def _check_class_names(class_names: tuple[str, ...], name: str) -> None:
    if not class_names:
        raise DataError(f"{_where(name)}: at least one class name is needed")
    if not all(isinstance(c, str) for c in class_names):
        raise DataError(f"{_where(name)}: class names must be strings, got {class_names!r}")
    if len(set(class_names)) != len(class_names):
        dupes = sorted({c for c in class_names if class_names.count(c) > 1})
        raise DataError(f"{_where(name)}: duplicate class names {dupes}")


def _check_targets(
    targets: torch.Tensor, images: torch.Tensor, class_names: tuple[str, ...], name: str
) -> None:
    if not isinstance(targets, torch.Tensor):
        raise DataError(f"{_where(name)}: targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype != torch.int64:
        raise DataError(f"{_where(name)}: targets must be int64, got {targets.dtype}")
    n, _, h, w = images.shape
    if tuple(targets.shape) not in ((n,), (n, h, w)):
        raise DataError(
            f"{_where(name)}: targets shaped {tuple(targets.shape)} do not match {n} images of "
            f"{h}x{w} (expected ({n},) labels or ({n}, {h}, {w}) masks)"
        )
    if targets.numel() == 0:
        return
    low, high = int(targets.min()), int(targets.max())
    bad = low if low < 0 else high if high >= len(class_names) else None
    if bad is not None:
        raise DataError(
            f"{_where(name)}: label {bad} is out of range [0, {len(class_names)}) "
            f"for {len(class_names)} class names"
        )

"""Turn a classification ImageSet into the targets of another task kind.

Midstream tasks should be diverse (ViM, Feng et al. 2023): besides classification, a dense task
(foreground segmentation) and a self-supervised one (rotation prediction) are built
from the same labelled images. Each function also returns the per-image *strata* the
task's splits and shots are stratified on, with their names for error messages.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from vimw.data.imageset import ImageSet
from vimw.data.specs import DENSE_KINDS, KINDS  # noqa: F401 (re-exported; defined without torch)
from vimw.errors import DataError

SEGMENTATION_CLASSES = ("background", "digit")
ROTATION_CLASSES = ("0", "90", "180", "270")
# A pixel is foreground when its intensity is above half the range: > 0.5 * 255.
FOREGROUND_THRESHOLD = 0.5 * 255


class Pool(NamedTuple):
    """A task's images before splitting, with what to stratify them on."""

    images: ImageSet
    strata: np.ndarray  # int64, one stratum per image
    strata_names: tuple[str, ...]

    def take(self, indices: np.ndarray, name: str) -> "Pool":
        """The pool restricted to ``indices``, its images named ``name``."""
        return Pool(self.images.subset(indices, name=name), self.strata[indices], self.strata_names)


def classification_pool(imageset: ImageSet) -> Pool:
    """A classification set as a pool whose strata are its labels."""
    return Pool(imageset, imageset.targets.numpy().copy(), imageset.class_names)


def foreground_masks(images: torch.Tensor) -> torch.Tensor:
    """N x H x W int64 masks: 1 where the mean over channels exceeds half intensity."""
    intensity = images.float().mean(dim=1)
    return (intensity > FOREGROUND_THRESHOLD).to(torch.int64)


def segmentation_pool(imageset: ImageSet) -> Pool:
    """Foreground masks as targets; splits stay stratified on the source classes."""
    masks = ImageSet(imageset.images, foreground_masks(imageset.images), SEGMENTATION_CLASSES, imageset.name)
    return Pool(masks, imageset.targets.numpy().copy(), imageset.class_names)


def rotate_images(images: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Each image turned counter-clockwise by ``quarter_turns[i] * 90`` degrees (torch.rot90)."""
    if images.shape[-1] != images.shape[-2] and bool((quarter_turns % 2 == 1).any()):
        raise DataError(f"rotation needs square images to stack, got {tuple(images.shape[-2:])}")
    rotated = images.clone()
    for k in (1, 2, 3):
        chosen = quarter_turns == k
        if chosen.any():
            rotated[chosen] = torch.rot90(images[chosen], k, dims=(-2, -1))
    return rotated


def rotation_pool(imageset: ImageSet, rng: np.random.Generator) -> Pool:
    """Self-supervised rotation prediction: k ~ U{0..3} per image, target k (k * 90 degrees)."""
    turns = torch.from_numpy(rng.integers(0, 4, size=len(imageset), dtype=np.int64))
    rotated = ImageSet(rotate_images(imageset.images, turns), turns, ROTATION_CLASSES, imageset.name)
    return Pool(rotated, turns.numpy().copy(), ROTATION_CLASSES)


def pretext_pool(kind: str, imageset: ImageSet, rng: np.random.Generator, split: str) -> Pool:
    """The kinds built from images alone (``vimw.data.pretext``), stratified on the source labels."""
    from vimw.data import pretext

    labels, names = imageset.targets.numpy().copy(), imageset.class_names
    if kind == "edges":
        return Pool(ImageSet(imageset.images, pretext.edge_masks(imageset.images), pretext.EDGE_CLASSES,
                             imageset.name), labels, names)
    if kind == "denoise":
        noisy = pretext.add_noise(imageset.images, rng)
        return Pool(ImageSet(noisy, pretext.grey_levels(imageset.images), pretext.DENOISE_CLASSES, imageset.name),
                    labels, names)
    if kind == "jigsaw":
        order = torch.from_numpy(rng.integers(0, len(pretext.JIGSAW_PERMUTATIONS), size=len(imageset)))
        shuffled = ImageSet(pretext.shuffle_tiles(imageset.images, order), order.to(torch.int64),
                            pretext.JIGSAW_CLASSES, imageset.name)
        return Pool(shuffled, labels, names)
    if kind == "instance":
        views = pretext.instance_views(imageset, rng, pretext.INSTANCE_COPIES[split])
        return Pool(views, views.targets.numpy().copy(), views.class_names)
    if kind == "distill":
        unlabelled = ImageSet(imageset.images, torch.zeros(len(imageset), dtype=torch.int64),
                              pretext.DISTILL_CLASSES, imageset.name)
        return Pool(unlabelled, labels, names)
    raise DataError(f"unknown task kind {kind!r}; expected one of {KINDS}")


def make_pool(kind: str, imageset: ImageSet, rng: np.random.Generator, split: str = "train") -> Pool:
    """The task-kind view of ``imageset``; ``rng`` is only drawn from by random kinds.

    ``split`` ("train" or "test") matters only to ``instance``, which makes more views
    of each instance for training than for testing.
    """
    if imageset.is_dense:
        raise DataError(f"dataset {imageset.name!r}: task kinds are built from class labels, not masks")
    if kind == "classification":
        return classification_pool(imageset)
    if kind == "segmentation":
        return segmentation_pool(imageset)
    if kind == "rotation":
        return rotation_pool(imageset, rng)
    if kind in KINDS:
        return pretext_pool(kind, imageset, rng, split)
    raise DataError(f"unknown task kind {kind!r}; expected one of {KINDS}")

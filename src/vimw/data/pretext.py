"""Midstream task kinds built from images alone: edges, denoising, jigsaw, instance discrimination.

Each turns a labelled ``ImageSet`` into the targets of its kind and keeps the source
labels (or the instance) as the strata that splits and subsamples are stratified on.
All of them are classification problems, per image or per pixel, so they train with the
ordinary cross-entropy and are scored like the other kinds (accuracy, mIoU):

- ``edges`` (dense): is a pixel on an edge? Sobel gradient magnitude of the grey image
  above ``EDGE_THRESHOLD`` (on the 0..1 intensity scale).
- ``denoise`` (dense): the input is the image plus Gaussian noise (sigma ``NOISE_SIGMA``
  of the range); the target is each pixel's clean grey level in ``DENOISE_LEVELS`` bins,
  i.e. denoising as per-pixel classification of the quantised clean intensity.
- ``jigsaw`` (image): the image cut into 2 x 2 tiles, shuffled by one of the 24
  permutations; the target is which permutation (Noroozi and Favaro, 2016).
- ``instance`` (image): instance discrimination with a parametric classifier
  (Exemplar-CNN, Dosovitskiy et al., 2014): ``INSTANCES`` images are each their own
  class; the inputs are random crops, flips and contrast changes of them, so the task
  rewards features that stay the same across views of one image.
- ``distill`` (image): the images without labels (one placeholder class); the zoo
  builder labels them with the backbone's own ImageNet prediction at its native
  resolution (``vimw.workflows.midstream``), so the module learns to recover, at the
  low input size, what the backbone sees at full size.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from vimw.data.imageset import ImageSet
from vimw.errors import DataError

EDGE_CLASSES = ("flat", "edge")
EDGE_THRESHOLD = 1.0  # Sobel magnitude on 0..1 intensities: a step of 0.25 across the kernel
DENOISE_LEVELS = 8
DENOISE_CLASSES = tuple(f"level{i}" for i in range(DENOISE_LEVELS))
NOISE_SIGMA = 0.2  # of the 0..255 range
JIGSAW_PERMUTATIONS = tuple(itertools.permutations(range(4)))
JIGSAW_CLASSES = tuple("".join(map(str, p)) for p in JIGSAW_PERMUTATIONS)
INSTANCES = 200
INSTANCE_SEED = 0  # which images are the instances: part of the task's definition
INSTANCE_COPIES = {"train": 16, "test": 4}
DISTILL_CLASSES = ("unlabelled",)


def grey(images: torch.Tensor) -> torch.Tensor:
    """N x H x W float intensities in 0..1 (the mean over channels)."""
    return images.float().mean(dim=1) / 255.0


def edge_masks(images: torch.Tensor) -> torch.Tensor:
    """N x H x W int64: 1 where the Sobel gradient magnitude exceeds ``EDGE_THRESHOLD``."""
    x = grey(images).unsqueeze(1)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = nn.functional.conv2d(padded, kx)
    gy = nn.functional.conv2d(padded, kx.transpose(-1, -2))
    return ((gx.square() + gy.square()).sqrt()[:, 0] > EDGE_THRESHOLD).to(torch.int64)


def add_noise(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    noise = torch.from_numpy(rng.normal(0.0, NOISE_SIGMA * 255.0, size=tuple(images.shape)).astype(np.float32))
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def grey_levels(images: torch.Tensor) -> torch.Tensor:
    """N x H x W int64: each pixel's grey level in ``DENOISE_LEVELS`` equal bins."""
    return (grey(images) * DENOISE_LEVELS).floor().clamp(0, DENOISE_LEVELS - 1).to(torch.int64)


def shuffle_tiles(images: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """Tile j (row-major, 2 x 2) of the output is tile ``JIGSAW_PERMUTATIONS[p][j]`` of the input."""
    n, c, h, w = images.shape
    if h % 2 or w % 2:
        raise DataError(f"jigsaw needs even image sides, got {h} x {w}")
    tiles = images.reshape(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(n, 4, c, h // 2, w // 2)
    order = torch.tensor(JIGSAW_PERMUTATIONS, dtype=torch.int64)[permutations]  # N x 4
    shuffled = tiles[torch.arange(n).unsqueeze(1), order]
    return shuffled.reshape(n, 2, 2, c, h // 2, w // 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def augment(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One random view: a crop of 60-100% of the side resized back, a flip, a contrast change."""
    c, h, w = image.shape
    side = max(2, int(round(min(h, w) * rng.uniform(0.6, 1.0))))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    view = image[:, top : top + side, left : left + side].float().unsqueeze(0)
    view = nn.functional.interpolate(view, size=(h, w), mode="bilinear", align_corners=False)[0]
    if rng.random() < 0.5:
        view = view.flip(-1)
    mean = view.mean()
    view = (view - mean) * rng.uniform(0.6, 1.4) + mean + rng.uniform(-30.0, 30.0)
    return view.round().clamp(0, 255).to(torch.uint8)


def instance_indices(n: int) -> np.ndarray:
    """The images that are the task's instances (fixed by ``INSTANCE_SEED``, not by a run's seed)."""
    if n < 2:
        raise DataError(f"instance discrimination needs at least 2 images, got {n}")
    rng = np.random.default_rng(INSTANCE_SEED)
    return np.sort(rng.choice(n, size=min(INSTANCES, n), replace=False))


def instance_views(imageset: ImageSet, rng: np.random.Generator, copies: int) -> ImageSet:
    chosen = instance_indices(len(imageset))
    views, labels = [], []
    for label, index in enumerate(chosen):
        for _ in range(copies):
            views.append(augment(imageset.images[int(index)], rng))
            labels.append(label)
    names = tuple(f"instance{i}" for i in range(len(chosen)))
    return ImageSet(torch.stack(views), torch.tensor(labels, dtype=torch.int64), names, imageset.name)

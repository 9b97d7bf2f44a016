"""Shared fixtures: a real EfficientNet-Lite0 at 40 px (``IMAGE_SIZE``), tiny synthetic tasks, a tiny trained zoo.

Everything here is sized for a shared 2-core machine: one intra-op thread (two threads
fighting other processes for two cores is ~10x slower than one), images of 16x16, tasks
of a few dozen images, modules trained for one epoch. Session-scoped objects are shared
read-only; a test that changes a zoo works on a copy (``zoo_copy``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from vimw.backbones import Backbone, create_backbone
from vimw.data import ImageSet, TaskData, TaskSpec, foreground_masks, rotate_images
from vimw.data.kinds import ROTATION_CLASSES, SEGMENTATION_CLASSES
from vimw.training import TrainConfig
from vimw.zoo import Zoo
from vimw.workflows.midstream import MidstreamRecipe, train_module

torch.set_num_threads(1)

IMAGE_SIZE = 40  # backbone input resolution: at 32 px Lite0's pooled features are all zero
PIXELS = 16  # side of the synthetic images (the backbone's Preprocess resizes them)
ZOO_MODULES = ("syn-bands", "syn-blocks", "syn-dots")


# -- synthetic images ------------------------------------------------------------------
def pattern_images(labels: np.ndarray, rng: np.random.Generator, pattern: str = "bands", size: int = PIXELS) -> np.ndarray:
    """uint8 ``N x 1 x size x size``: dark noise plus a bright, class-specific pattern.

    ``bands``: a horizontal band whose row depends on the class; ``blocks``: a bright
    quadrant per class; ``dots``: a checkerboard whose period depends on the class.
    Easy enough for a frozen backbone + a linear head to separate in one or two epochs.
    """
    n = len(labels)
    images = rng.integers(0, 60, size=(n, 1, size, size)).astype(np.float64)
    half = size // 2
    for i, label in enumerate(labels):
        label = int(label)
        if pattern == "bands":
            band = size // 4
            top = (label * band) % (size - band + 1)
            images[i, 0, top : top + band, :] += 190
        elif pattern == "blocks":
            r, c = divmod(label % 4, 2)
            images[i, 0, r * half : (r + 1) * half, c * half : (c + 1) * half] += 190
        elif pattern == "dots":
            period = label + 1
            yy, xx = np.mgrid[0:size, 0:size]
            images[i, 0][((yy // period) + (xx // period)) % 2 == 0] += 190
        else:
            raise ValueError(pattern)
    return np.clip(images, 0, 255).astype(np.uint8)


def balanced_labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % classes)


def make_imageset(n: int, classes: int, rng: np.random.Generator, pattern: str, name: str) -> ImageSet:
    labels = balanced_labels(n, classes, rng)
    images = torch.from_numpy(pattern_images(labels, rng, pattern))
    return ImageSet(images, torch.from_numpy(labels.astype(np.int64)), tuple(f"class{c}" for c in range(classes)), name)


def to_kind(imageset: ImageSet, kind: str, rng: np.random.Generator) -> ImageSet:
    if kind == "classification":
        return imageset
    if kind == "segmentation":
        return ImageSet(imageset.images, foreground_masks(imageset.images), SEGMENTATION_CLASSES, imageset.name)
    if kind == "rotation":
        turns = torch.from_numpy(rng.integers(0, 4, size=len(imageset)).astype(np.int64))
        return ImageSet(rotate_images(imageset.images, turns), turns, ROTATION_CLASSES, imageset.name)
    raise ValueError(kind)


def synthetic_task(
    *,
    n_train: int = 48,
    n_val: int = 24,
    n_test: int = 24,
    classes: int = 3,
    pattern: str = "bands",
    kind: str = "classification",
    seed: int = 0,
    name: str = "synthetic",
) -> TaskData:
    rng = np.random.default_rng(seed)
    splits = {
        split: to_kind(make_imageset(n, classes, rng, pattern, f"{name}/{split}"), kind, rng)
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test))
    }
    return TaskData(TaskSpec(name, "synthetic", kind=kind), splits["train"], splits["val"], splits["test"])


def write_npz(path: Path, n: int = 96, classes: int = 3, pattern: str = "bands", seed: int = 0) -> Path:
    """A user ``.npz`` task (images, labels, class_names) of the same easy patterns."""
    rng = np.random.default_rng(seed)
    labels = balanced_labels(n, classes, rng)
    np.savez(
        path,
        images=pattern_images(labels, rng, pattern)[:, 0],
        labels=labels.astype(np.int64),
        class_names=np.array([f"{pattern}{c}" for c in range(classes)]),
    )
    return path


def write_image_folder(root: Path, per_class: int = 8, classes: int = 3, pattern: str = "blocks", seed: int = 0) -> Path:
    """A user's image folder ``root/<class>/<n>.png`` (RGB PNGs of 16x16)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"kind{c}"
        folder.mkdir(parents=True, exist_ok=True)
        images = pattern_images(np.full(per_class, c), rng, pattern)
        for i, image in enumerate(images):
            Image.fromarray(np.repeat(image[0][:, :, None], 3, axis=2)).save(folder / f"{i:03d}.png")
    return root


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def lite0() -> Backbone:
    """The real, pretrained, frozen EfficientNet-Lite0 at ``IMAGE_SIZE`` px. Shared: never unfreeze it."""
    backbone = create_backbone("efficientnet_lite0", image_size=IMAGE_SIZE)
    backbone.fingerprint()
    return backbone


@pytest.fixture(scope="session")
def make_task() -> Callable[..., TaskData]:
    """Factory for tiny synthetic TaskData (see ``synthetic_task`` for the options)."""
    return synthetic_task


@pytest.fixture
def fast_config() -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=16, lr=1e-2, eval_batch_size=64)


@pytest.fixture(scope="session")
def task_npz(tmp_path_factory) -> Path:
    return write_npz(tmp_path_factory.mktemp("npz") / "bands.npz")


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory, lite0) -> Zoo:
    """A zoo of three convpass modules, each trained for one epoch on 77 synthetic images.

    Built through ``train_module`` on ``npz:`` tasks, the same path ``vimw zoo train``
    takes. Shared by every test: copy it (``zoo_copy``) before changing anything.
    """
    data_dir = tmp_path_factory.mktemp("zoo-data")
    zoo = Zoo(tmp_path_factory.mktemp("zoo") / "zoo")
    for seed, name in enumerate(ZOO_MODULES):
        pattern = name.split("-")[1]
        npz = write_npz(data_dir / f"{pattern}.npz", pattern=pattern, seed=seed)
        recipe = MidstreamRecipe(name, f"npz:{npz}", train=TrainConfig(epochs=1, batch_size=16, lr=1e-2, seed=seed))
        train_module(zoo, recipe, backbone=lite0, progress=False)
    return zoo


@pytest.fixture
def zoo_copy(tiny_zoo, tmp_path) -> Zoo:
    """A private copy of the session zoo that a test may change."""
    return Zoo(shutil.copytree(tiny_zoo.root, tmp_path / "zoo"))


@pytest.fixture(scope="session")
def lite2() -> Backbone:
    return create_backbone("efficientnet_lite2", image_size=IMAGE_SIZE)

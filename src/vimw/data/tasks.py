"""Tasks: named, reproducible (train, val, test) splits over the data sources.

A ``TaskSpec`` (``vimw.data.specs``) says *what* a task is (source dataset, kind, which
classes); ``load_task`` turns it into tensors, always in this order so results are comparable across runs:

1. source (train, test) -> 2. keep ``classes`` and relabel them 0..C-1 in the given order
-> 3. task kind (segmentation masks, rotations) -> 4. optional stratified subsample to
``max_train`` / ``max_test`` -> 5. validation carved from train (never from test)
-> 6. optional k-shot sampling from the rest of train.

Every random draw comes from a seed through a separate stream per stage, so the same
arguments give identical tensors, and changing ``max_test`` does not change the shots.
Three seeds, each for its own purpose:

- the test split (its subsample and any random views of its kind) always comes from
  ``TEST_SEED``: every run, seed and method is scored on the same test images;
- ``split_seed`` chooses the images: the ``max_train`` subsample, validation and shots;
- ``seed`` draws the training split's random views (rotations, noise, tile orders) and
  stands in for ``split_seed`` when that is not given, as it did before the two were
  told apart. A training seed proper (initialisation, batch order) belongs to the
  training config, so a benchmark can vary the shots and the training apart.
  (``rotation`` stratifies on its random turns, so there ``seed`` moves the choice too.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from vimw.data.imageset import ImageSet
from vimw.data.kinds import Pool, make_pool
from vimw.data.sources import load_dataset
from vimw.data.specs import FOLDER_PREFIX, SAME_SOURCE_KINDS, TaskSpec, get_task_spec, list_tasks, register_task, resolve_task  # noqa: F401 (re-exported)
from vimw.data.splits import make_rng, sample_shots, split_by_fraction, subsample
from vimw.errors import DataError

# One random stream per pipeline stage (see the module docstring).
_STREAM_KIND_TRAIN, _STREAM_KIND_TEST = 1, 2
_STREAM_SUBSAMPLE_TRAIN, _STREAM_SUBSAMPLE_TEST = 3, 4
_STREAM_VALIDATION = 5
MIN_FEW_SHOT_VAL = 2
# The test split's own seed: never a run's, so seeds and methods share one test set.
TEST_SEED = 0


@dataclass
class TaskData:
    """A loaded task: train, val (carved from the training data) and test splits."""

    spec: TaskSpec
    train: ImageSet
    val: ImageSet
    test: ImageSet

    @property
    def num_classes(self) -> int:
        """The number of classes the task's head predicts."""
        return self.train.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """The task's class names, in label order."""
        return self.train.class_names

    @property
    def kind(self) -> str:
        """The task kind (classification, segmentation, rotation...)."""
        return self.spec.kind


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
    split_seed: int | None = None,
    skip_bad: bool = False,
) -> TaskData:
    """Build a task's train / val / test ImageSets, deterministically from the seeds.

    ``shots``: images per class for training (for segmentation: per class of the source
    images, e.g. per digit); val is then up to ``max(shots, 2)`` other training images
    per class and ``val_fraction`` is unused. ``max_train`` /
    ``max_test``: stratified subsample before validation and shots are drawn; the test
    subsample is fixed (``TEST_SEED``), whatever the seeds.
    ``split_seed``: which images are the shots and validation (default: ``seed``);
    ``seed``: the training split's random views (see the module docstring).
    ``image_size``: for image folders only (default 64); other sources keep their
    native resolution (the backbone's ``Preprocess`` resizes batches on the fly).
    ``skip_bad``: an image folder's unreadable files are left out (and logged) instead of
    stopping the load.
    A classification task needs at least two classes (one class teaches a head nothing).
    """
    spec = resolve_task(name_or_path)
    for arg, value in (("shots", shots), ("max_train", max_train), ("max_test", max_test)):
        _check_positive(arg, value)
    _check_positive("image_size", image_size)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    split_seed = seed if split_seed is None else split_seed
    for value in (seed, split_seed):
        make_rng(value, 0)  # validates the seeds before any data is read

    source_train, source_test = load_dataset(spec.dataset, image_size=image_size, skip_bad=skip_bad)
    if spec.kind in SAME_SOURCE_KINDS:  # other views of the same instances, never the source's test images
        source_test = source_train
    train_pool = make_pool(
        spec.kind, _check_classes(select_classes(source_train, spec.classes), spec), make_rng(seed, _STREAM_KIND_TRAIN)
    )
    test_pool = make_pool(spec.kind, select_classes(source_test, spec.classes),
                          make_rng(TEST_SEED, _STREAM_KIND_TEST), split="test")

    if max_train is not None:
        train_pool = train_pool.take(_limit(train_pool, max_train, split_seed, _STREAM_SUBSAMPLE_TRAIN), spec.name)
    test_indices = _limit(test_pool, max_test, TEST_SEED, _STREAM_SUBSAMPLE_TEST)
    train_indices, val_indices = _train_val_indices(train_pool, shots, val_fraction, split_seed)

    data = TaskData(
        spec=spec,
        train=train_pool.images.subset(train_indices, name=f"{spec.name}/train"),
        val=train_pool.images.subset(val_indices, name=f"{spec.name}/val"),
        test=test_pool.images.subset(test_indices, name=f"{spec.name}/test"),
    )
    _check_not_empty(data, val_expected=shots is not None or val_fraction > 0)
    return data


def _check_classes(imageset: ImageSet, spec: TaskSpec) -> ImageSet:
    """``imageset``, refused when a classification task would have fewer than two classes."""
    if spec.kind == "classification" and imageset.num_classes < 2:
        layout = " (one sub-folder per class)" if spec.dataset.startswith(FOLDER_PREFIX) else ""
        raise DataError(f"task {spec.name!r} has {imageset.num_classes} class "
                        f"({', '.join(map(repr, imageset.class_names))}); a classifier needs at least 2{layout}")
    return imageset


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

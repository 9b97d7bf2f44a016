"""Where a task's images come from: the record that the zoo's overlap rule compares.

``SourceRecord`` says which images a task can hold and which classes they show, without
reading the images of a built-in dataset:

- a built-in dataset declares the original files its train and test splits are drawn
  from (``sources.DATASET_ORIGINS``), its class names (``DATASET_CLASSES``) and its
  label space (``DATASET_LABEL_SPACES``, default: its own name). Datasets that name the
  same things share one, as MNIST and scikit-learn's 8x8 digits share "digits 0-9";
- a user's folder or ``.npz`` is known by the content of its images: sha256 of every
  image file of a folder, of every image array of an archive (``image_digests``).

A record is built from a ``TaskSpec`` or from the ``task`` entry of a zoo module's
manifest (the spec's fields plus the ``origins`` written at training time, and for user
data the ``image_digests`` if they were written then), so a downstream task and a module
are described the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vimw.data import sources
from vimw.data.specs import FOLDER_PREFIX, NPZ_PREFIX, SAME_SOURCE_KINDS, TaskSpec
from vimw.data.user_data import IMAGE_EXTENSIONS
from vimw.errors import DataError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class SourceRecord:
    """Which images a task can hold and which classes they show.

    ``images``: (original file, class) pairs of a built-in dataset, or content digests
    of a user's images; ``None`` when nothing is known (a registered dataset that
    declares no origins, a user folder that no longer exists). ``classes``: the source
    classes its images show, ``label_space``: the vocabulary those names belong to.
    """

    dataset: str
    kind: str
    images: frozenset | None
    classes: tuple[str, ...] | None
    label_space: str

    @property
    def known(self) -> bool:
        """Whether the record says which images the task holds."""
        return self.images is not None


def _is_user_data(dataset: str) -> bool:
    return dataset.startswith((FOLDER_PREFIX, NPZ_PREFIX))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _folder_digests(root: Path) -> frozenset[str]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return frozenset(f"file:{_sha256(p.read_bytes())}" for p in files)


def _npz_digests(path: Path) -> frozenset[str]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = archive["images"]
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise DataError(f"{path}: cannot read its images to compare them ({exc})") from exc
    return frozenset(f"array:{_sha256(np.ascontiguousarray(image).tobytes())}" for image in images)


def image_digests(dataset: str) -> frozenset[str] | None:
    """Content digests of a user dataset's images (``folder:``/``npz:``); None if it is gone.

    Files are compared byte for byte, archives image array by image array: the same
    picture saved as PNG and as JPEG, or resized, is not recognised as the same image.
    """
    path = Path(dataset.partition(":")[2])
    if dataset.startswith(FOLDER_PREFIX):
        return _folder_digests(path) if path.is_dir() else None
    if dataset.startswith(NPZ_PREFIX):
        return _npz_digests(path) if path.is_file() else None
    raise DataError(f"{dataset!r} is not user data (folder:<dir> or npz:<file>)")


def _builtin_images(dataset: str, kind: str, classes: tuple[str, ...] | None,
                    origins: Mapping[str, str] | None) -> frozenset | None:
    origins = origins or sources.DATASET_ORIGINS.get(dataset)
    if not origins or classes is None:
        return None
    # An instance task's test views are cut from its training images (SAME_SOURCE_KINDS).
    splits = ("train",) if kind in SAME_SOURCE_KINDS else SPLITS
    return frozenset((origins[split], name) for split in splits for name in classes)


def source_record(task: TaskSpec | Mapping) -> SourceRecord:
    """The record of a task spec, or of a module manifest's ``task`` entry (a spec's fields + ``origins``)."""
    entry = task.to_dict() if isinstance(task, TaskSpec) else dict(task)
    dataset, kind = str(entry.get("dataset", "")), str(entry.get("kind", "classification"))
    if not dataset:
        raise DataError(f"task {entry.get('name')!r} names no dataset, so its images cannot be traced")
    chosen = entry.get("classes")
    if _is_user_data(dataset):
        # Class names of user data are the user's words: they only compare within one dataset.
        classes = tuple(chosen) if chosen else None
        # Digests written when a module was trained describe what it saw, even if the folder changed since.
        recorded = entry.get("image_digests")
        digests = frozenset(recorded) if recorded is not None else image_digests(dataset)
        return SourceRecord(dataset, kind, digests, classes, dataset)
    classes = tuple(chosen) if chosen else sources.DATASET_CLASSES.get(dataset)
    images = _builtin_images(dataset, kind, classes, entry.get("origins"))
    return SourceRecord(dataset, kind, images, classes, sources.DATASET_LABEL_SPACES.get(dataset, dataset))

"""``photos``: 32-px crops of the photographs bundled with scikit-image and scikit-learn.

Natural images that install with vimw's own dependencies, for midstream tasks in a
domain other than grey clothing and digits: which photo a crop comes from
(classification), and the image-only kinds (edges, denoising, jigsaw, instances,
distillation). scikit-image's LFW faces (``lfw_subset.npy``) are never read: they are
kept for independent checks.

Each photo is resized so that its shorter side is ``SHORT_SIDE`` pixels (RGB; grey
photos repeated on three channels). Training crops come from the left three quarters of
every photo, test crops from the right quarter, so no test pixel is ever seen in
training. Crop positions are drawn with a fixed seed: the dataset is the same on every
machine.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from vimw.data.imageset import ImageSet
from vimw.errors import DataError

SHORT_SIDE = 160
CROP = 32
TRAIN_CROPS, TEST_CROPS = 150, 40
TRAIN_FRACTION = 0.75
CROP_SEED = 0
# (package, file): natural photographs, textures and microscopy; no faces of LFW.
PHOTO_FILES = (
    ("skimage", "astronaut.png"), ("skimage", "brick.png"), ("skimage", "camera.png"),
    ("skimage", "cell.png"), ("skimage", "chelsea.png"), ("skimage", "coffee.png"),
    ("skimage", "coins.png"), ("skimage", "grass.png"), ("skimage", "gravel.png"),
    ("skimage", "hubble_deep_field.jpg"), ("skimage", "ihc.png"), ("skimage", "moon.png"),
    ("skimage", "motorcycle_left.png"), ("skimage", "retina.jpg"), ("skimage", "rocket.jpg"),
    ("skimage", "text.png"), ("skimage", "page.png"),
    ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"),
)  # fmt: skip
PHOTO_CLASSES = tuple(name.split(".")[0] for _, name in PHOTO_FILES)
_FOLDERS = {"skimage": ("data",), "sklearn": ("datasets", "images")}


def photo_path(package: str, name: str) -> Path:
    """Where an installed package keeps a bundled photo (found without importing the package)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the photos dataset needs the package {package!r} (a vimw dependency); reinstall vimw")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_FOLDERS[package], name)
    if not path.is_file():
        raise DataError(f"bundled photo {path} is missing; reinstall {package}")
    return path


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = SHORT_SIDE / min(image.size)
        size = (max(CROP, round(image.size[0] * scale)), max(CROP, round(image.size[1] * scale)))
        return np.asarray(image.resize(size, Image.BILINEAR, reducing_gap=None), dtype=np.uint8)


def _crops(photo: np.ndarray, left: int, right: int, count: int, rng: np.random.Generator) -> np.ndarray:
    height = photo.shape[0]
    tops = rng.integers(0, height - CROP + 1, size=count)
    lefts = rng.integers(left, right - CROP + 1, size=count)
    return np.stack([photo[t : t + CROP, x : x + CROP] for t, x in zip(tops, lefts)])


@lru_cache(maxsize=1)
def load_photos() -> tuple[ImageSet, ImageSet]:
    """(train, test) crops: ``TRAIN_CROPS`` / ``TEST_CROPS`` per photo, 3 x 32 x 32 uint8."""
    rng = np.random.default_rng(CROP_SEED)
    parts = {"train": ([], []), "test": ([], [])}
    for label, (package, name) in enumerate(PHOTO_FILES):
        photo = _read(photo_path(package, name))
        cut = int(photo.shape[1] * TRAIN_FRACTION)
        for split, (left, right, count) in (("train", (0, cut, TRAIN_CROPS)),
                                             ("test", (cut, photo.shape[1], TEST_CROPS))):
            if right - left < CROP:
                raise DataError(f"{name}: too narrow for {CROP}-px crops after resizing")
            images, labels = parts[split]
            images.append(_crops(photo, left, right, count, rng))
            labels += [label] * count
    sets = []
    for split, (images, labels) in parts.items():
        array = np.concatenate(images).transpose(0, 3, 1, 2).copy()
        sets.append(ImageSet(torch.from_numpy(array), torch.tensor(labels, dtype=torch.int64), PHOTO_CLASSES,
                             f"photos/{split}"))
    return sets[0], sets[1]

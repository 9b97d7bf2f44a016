"""A user's own images: a folder with one sub-folder per class, or an ``.npz`` archive.

These are read afresh on every call (no cache): the files are the user's and may change
between calls. Every error is a ``DataError`` or ``FormatError`` naming the offending
path, since a researcher pointing vimw at a folder of thousands of files needs to know
*which* one is wrong.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vimw.data.imageset import ImageSet
from vimw.data.splits import make_rng, split_by_fraction
from vimw.errors import DataError, FormatError, ImageReadError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
# A user folder's images are stored at this side when read (backbones resize them again to their input).
FOLDER_IMAGE_SIZE = 64
# User data without an explicit test split: 80/20 per class, always with this seed, so
# the test set is the same whatever seed a run uses.
USER_TEST_FRACTION = 0.2
USER_SPLIT_SEED = 0
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
SKIPPED_SHOWN = 5  # skipped files named in the warning (the count covers them all)


# -- image folders ---------------------------------------------------------------------
def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    dirs = sorted((p for p in root.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)
    if not dirs:
        raise DataError(f"image folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    return dirs


def _image_files(class_dir: Path) -> list[Path]:
    files = sorted(
        p
        for p in class_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and _visible(p)
    )
    if not files:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(f"class folder {class_dir} contains no images ({extensions})")
    return files


def _read_image(path: Path | io.BytesIO, size: int | None, name: str | None = None) -> np.ndarray:
    """One image (a file, or bytes in memory named ``name``) as uint8 ``H x W`` (grey) or
    ``H x W x 3``, resized to ``size`` x ``size``.

    Alpha is dropped; the aspect ratio is not kept (like ``Resize((size, size))``);
    ``size=None`` keeps the image's own size.
    """
    try:
        with Image.open(path) as image:
            image = image.convert("L" if image.mode in _GREY_MODES else "RGB")
            if size is not None:
                image = image.resize((size, size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError as exc:  # Pillow's message would name a memory buffer's repr
        raise ImageReadError(f"cannot read image {name or path}: not an image format Pillow can read") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read image {name or path}: {exc}") from exc


def read_image(path: str | os.PathLike, size: int | None = None) -> torch.Tensor:
    """One image file as a uint8 ``C x H x W`` tensor (C = 1 for grey, else 3)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file {path} does not exist")
    return _stack([_read_image(path, size)])[0]


def decode_image(data: bytes, size: int | None = None, name: str = "upload") -> torch.Tensor:
    """Image file bytes (an upload) as uint8 ``C x H x W``, decoded exactly as ``read_image`` decodes a file."""
    if not data:
        raise DataError(f"cannot read image {name}: it is empty")
    return _stack([_read_image(io.BytesIO(data), size, name)])[0]


def _stack(pixels: list[np.ndarray]) -> torch.Tensor:
    """N x C x H x W uint8: C = 1 if every image is grey, else grey ones are repeated to RGB."""
    if all(p.ndim == 2 for p in pixels):
        return torch.from_numpy(np.stack(pixels)[:, None])
    rgb = [p if p.ndim == 3 else np.repeat(p[:, :, None], 3, axis=2) for p in pixels]
    return torch.from_numpy(np.stack(rgb).transpose(0, 3, 1, 2).copy())


def _read_class(class_dir: Path, size: int, skip_bad: bool, skipped: list[tuple[Path, str]]) -> list[np.ndarray]:
    """Every image of one class folder; unreadable ones stop the run, or with ``skip_bad`` go to ``skipped``."""
    files, pixels = _image_files(class_dir), []
    for file in files:
        try:
            pixels.append(_read_image(file, size))
        except ImageReadError as exc:
            if not skip_bad:
                raise
            skipped.append((file, str(exc)))
    if not pixels:
        raise DataError(f"class folder {class_dir} contains no readable image (all {len(files)} are unreadable)")
    return pixels


def describe_skipped(skipped: list[tuple[str | os.PathLike, str]], root: Path | None = None) -> str:
    """One line: how many image files were left out (of ``root``) and which, the first ``SKIPPED_SHOWN``
    by name (relative to ``root``)."""
    names = [os.path.relpath(path, root) if root else str(path) for path, _ in skipped[:SKIPPED_SHOWN]]
    more = f" and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
    where = f" in {root}" if root else ""
    return f"skipped {len(skipped)} unreadable image file(s){where}: {', '.join(names)}{more}"


def load_image_folder(
    path: str | os.PathLike,
    *,
    image_size: int = FOLDER_IMAGE_SIZE,
    class_names: tuple[str, ...] | None = None,
    skip_bad: bool = False,
) -> ImageSet:
    """Read ``path/<class>/**/<image>`` like torchvision's ``ImageFolder``.

    Classes are the sorted sub-folder names unless ``class_names`` fixes the label
    order (used so a ``test/`` folder shares its ``train/`` folder's labels; it may then
    lack classes but not add new ones). Every image is resized so the set stacks.
    An unreadable file stops the load with an ``ImageReadError`` naming it; ``skip_bad``
    leaves such files out instead and logs how many and which.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    root = Path(path)
    dirs = _class_dirs(root)
    names = tuple(d.name for d in dirs) if class_names is None else tuple(class_names)
    unknown = [d.name for d in dirs if d.name not in names]
    if unknown:
        raise DataError(f"image folder {root} has classes {unknown} that are not in {list(names)}")
    pixels, labels, skipped = [], [], []
    for class_dir in dirs:
        read = _read_class(class_dir, image_size, skip_bad, skipped)
        pixels += read
        labels += [names.index(class_dir.name)] * len(read)
    if skipped:
        log.warning("vimw: %s", describe_skipped(skipped, root))
    return ImageSet(_stack(pixels), torch.tensor(labels, dtype=torch.int64), names, name=str(root))


def split_user_set(imageset: ImageSet) -> tuple[ImageSet, ImageSet]:
    """Fixed 80/20 stratified train/test split of user data (seed 0, whatever the run's seed)."""
    strata = imageset.targets.numpy()
    train, test = split_by_fraction(strata, USER_TEST_FRACTION, make_rng(USER_SPLIT_SEED, 0))
    return (
        imageset.subset(train, name=f"{imageset.name}/train"),
        imageset.subset(test, name=f"{imageset.name}/test"),
    )


def load_image_folder_split(
    path: str | os.PathLike, *, image_size: int = FOLDER_IMAGE_SIZE, skip_bad: bool = False
) -> tuple[ImageSet, ImageSet]:
    """(train, test) from ``path/train`` and ``path/test`` if both exist, else an 80/20 split."""
    root = Path(path)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = load_image_folder(root / "train", image_size=image_size, skip_bad=skip_bad)
        test = load_image_folder(root / "test", image_size=image_size, class_names=train.class_names,
                                 skip_bad=skip_bad)
        return train, test
    return split_user_set(load_image_folder(root, image_size=image_size, skip_bad=skip_bad))


# -- .npz archives ---------------------------------------------------------------------
def _read_npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays vimw uses, loaded without pickle; IO and format problems become FormatError."""
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise FormatError(f"{path}: expected an .npz archive of named arrays, found a single array")
            wanted = ("images", "labels", "class_names")
            return {key: archive[key] for key in wanted if key in archive.files}
    except FormatError:
        raise
    except ValueError as exc:
        # numpy refuses object arrays when allow_pickle=False; loading them would run pickle.
        raise FormatError(f"{path}: refusing to load an object (pickled) array: {exc}") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise FormatError(f"{path}: not a readable .npz archive ({exc})") from exc


def _to_nchw(images: np.ndarray, source: str) -> np.ndarray:
    """N,H,W / N,H,W,C / N,C,H,W -> N,C,H,W with C in {1, 3} (alpha dropped)."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        raise DataError(
            f"{source}: images must be N x H x W, N x H x W x C or N x C x H x W, got {images.shape}"
        )
    channels_first = images.shape[1] in (1, 3, 4)
    channels_last = images.shape[3] in (1, 3, 4)
    if channels_last and not channels_first:
        images = images.transpose(0, 3, 1, 2)
    elif not channels_first:
        raise DataError(f"{source}: cannot find a channel axis of size 1, 3 or 4 in images {images.shape}")
    return images[:, :3]


def _to_uint8(images: np.ndarray, source: str) -> np.ndarray:
    """uint8 as is; floats must be finite and in [0, 1]; other integers must be in 0..255."""
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind == "f":
        if not np.isfinite(images).all():
            raise DataError(f"{source}: images contain NaN or infinite pixel values")
        low, high = float(images.min()), float(images.max())
        if low < 0.0 or high > 1.0:
            raise DataError(f"{source}: float images must lie in [0, 1], found [{low}, {high}]")
        return np.rint(images * 255.0).astype(np.uint8)
    if images.dtype.kind in "iu":
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise DataError(f"{source}: integer images must lie in 0..255, found {low}..{high}")
        return images.astype(np.uint8)
    raise DataError(f"{source}: images must be uint8 or float in [0, 1], got dtype {images.dtype}")


def _class_names(arrays: dict[str, np.ndarray], labels: np.ndarray, source: str) -> tuple[str, ...]:
    if "class_names" not in arrays:
        return tuple(str(i) for i in range(max(int(labels.max()), 0) + 1))
    names = arrays["class_names"]
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(
            f"{source}: class_names must be a 1-D array of strings, got {names.dtype} {names.shape}"
        )
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())


def load_npz(path: str | os.PathLike) -> ImageSet:
    """An ImageSet from an ``.npz`` with ``images``, ``labels`` and optional ``class_names``.

    Loaded with ``allow_pickle=False`` always: an ``.npz`` from elsewhere must not be able
    to run code. Without ``class_names``, classes are named "0".."max label".
    """
    path = Path(path)
    source = str(path)
    arrays = _read_npz_arrays(path)
    missing = [key for key in ("images", "labels") if key not in arrays]
    if missing:
        raise DataError(f"{source}: missing array(s) {missing}; expected 'images' and 'labels'")
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim == 0 or images.shape[0] == 0:
        raise DataError(f"{source}: the archive holds no images")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{source}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")
    pixels = _to_uint8(_to_nchw(images, source), source)
    return ImageSet(
        images=torch.from_numpy(np.ascontiguousarray(pixels)),
        targets=torch.from_numpy(labels.astype(np.int64)),
        class_names=_class_names(arrays, labels, source),
        name=source,
    )


def load_npz_split(path: str | os.PathLike) -> tuple[ImageSet, ImageSet]:
    """(train, test): a fixed 80/20 stratified split of :func:`load_npz`."""
    return split_user_set(load_npz(path))

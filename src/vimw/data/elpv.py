"""``elpv``: electroluminescence (EL) images of solar cells, read from the PyPI package ``elpv-dataset``.

A domain no zoo module comes near (industrial inspection, near-infrared EL imaging) with
real images nobody here made: 2,624 grey 300 x 300 crops of single cells, cut out of EL
images of 44 photovoltaic modules (mono- and polycrystalline) and perspective- and
lens-corrected by the authors. Experts graded each cell's chance of a defect that costs
power as 0, 1/3, 2/3 or 1; the four grades are the classes here, in that order.

Source: Buerhop-Lutz et al., "A Benchmark for Visual Identification of Defective Solar
Cells in Electroluminescence Imagery" (EU PVSEC 2018), and Deitsch et al., "Automatic
classification of defective photovoltaic module cells in electroluminescence images"
(Solar Energy 185, 2019). License: the images and labels are CC BY-NC-SA 4.0 (research,
non-commercial use, attribution); the package's code is Apache-2.0. Installed with the
optional extra ``elpv`` (``pip install 'vimw[elpv]'``, a 91 MB wheel); read offline from
the package's own folder, never downloaded at run time.

Each cell is averaged down to ``ELPV_SIZE`` pixels a side (3 x 3 boxes of the 300-px
original), which keeps every defect visible at the backbones' 64-224 px inputs and the
whole set at 26 MB in memory instead of 236 MB. The package ships no split; the source
registry holds out ``ELPV_TEST_SIZE`` cells, stratified by grade, with a fixed seed.
Mirroring a cell keeps its grade (a crack mirrored is still a crack).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from vimw.data.imageset import ImageSet
from vimw.errors import DataError, FormatError, MissingExtraError

ELPV_PACKAGE = "elpv_dataset"
ELPV_GRADES = ("functional", "possibly defective", "likely defective", "defective")  # p = 0, 1/3, 2/3, 1
ELPV_MATERIALS = ("mono", "poly")
ELPV_NATIVE_SIZE = 300
ELPV_SIZE = 100  # 300 / 3: each pixel the mean of a 3 x 3 box
ELPV_TEST_SIZE = 800


def elpv_labels_path() -> Path:
    """The package's ``labels.csv`` (found without importing the package)."""
    spec = importlib.util.find_spec(ELPV_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            "the elpv solar-cell images need the optional package 'elpv-dataset'. "
            "Install it with: pip install 'vimw[elpv]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "labels.csv"
    if not path.is_file():
        raise DataError(f"elpv-dataset is installed but its label file {path} is missing; reinstall elpv-dataset")
    return path


def parse_labels(text: str, where: str) -> list[tuple[str, int, str]]:
    """(image path relative to the label file, grade 0..3, material) per line of ``labels.csv``."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3:
            raise FormatError(f"{where}:{number}: expected 'path probability type', found {line!r}")
        path, probability, material = fields
        try:
            thirds = float(probability) * 3
        except ValueError:
            raise FormatError(f"{where}:{number}: defect probability {probability!r} is not a number") from None
        grade = round(thirds)
        if abs(thirds - grade) > 1e-6 or not 0 <= grade < len(ELPV_GRADES):
            raise FormatError(f"{where}:{number}: defect probability {probability} is not 0, 1/3, 2/3 or 1")
        if material not in ELPV_MATERIALS:
            raise FormatError(f"{where}:{number}: module type {material!r} is not one of {ELPV_MATERIALS}")
        rows.append((path, grade, material))
    if not rows:
        raise FormatError(f"{where}: no labelled cells")
    return rows


def _read_cell(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            grey = image.convert("L")
            if grey.size != (ELPV_NATIVE_SIZE, ELPV_NATIVE_SIZE):
                raise FormatError(f"{path}: expected a {ELPV_NATIVE_SIZE} x {ELPV_NATIVE_SIZE} cell, found {grey.size}")
            return np.asarray(grey.resize((ELPV_SIZE, ELPV_SIZE), Image.BOX))
    except (OSError, UnidentifiedImageError) as exc:
        raise FormatError(f"{path}: cannot read the cell image ({exc})") from exc


def load_elpv_cells() -> ImageSet:
    """All 2,624 cells as one ImageSet (1 x 100 x 100 uint8), labelled with the four grades."""
    labels = elpv_labels_path()
    rows = parse_labels(labels.read_text(encoding="utf-8"), str(labels))
    images = np.stack([_read_cell(labels.parent / path) for path, _, _ in rows])
    return ImageSet(
        images=torch.from_numpy(images[:, None].copy()),
        targets=torch.tensor([grade for _, grade, _ in rows], dtype=torch.int64),
        class_names=ELPV_GRADES,
        name="elpv",
    )

"""TransMiter's data: the base/novel split, the fixed image sets, their views, and the
calibrated, cached zero-shot passes over them. ``vimw transfer`` and the protocol share it.

Image sets are fixed by the task, ``data_seed`` and the counts (never by the training seed),
so each zero-shot model's pass over each set is computed once, stored in a
:class:`~vimw.transfer.cache.LogitCache` and shared by every step, seed and method:

* a labelled *pool* (``pool_per_class`` training images per class): each seed draws its
  ``shots`` base-class training images and ``val_per_class`` validation images per class;
* an *unlabeled* set (``num_unlabeled`` training images outside the pool): with
  ``extraction="unlabeled"`` extraction distils the fine-tuned weak model on it too, no labels;
* the *extraction* images: the seed's training shots (their images only; the reference
  distils on its few-shot base set), plus the unlabeled set with ``extraction="unlabeled"``;
* the *alignment* set, seen by both zero-shot models: the seed's training shots (their images
  only, never their labels; the reference aligns on its few-shot set) plus the first
  ``num_align`` unlabeled images;
* ``num_test`` scored images: test images, or (``test_from="train"``, for development runs)
  training images outside the pool and the unlabeled set, so development never reads a test image.

Training and extraction images come in ``views`` deterministic augmented views (:data:`VIEWS`:
the image, its mirror image, shifted copies), alignment images in ``align_views`` (more views
give the rotation more rows than K), as the reference flattens its augmented views into both
steps. The first ``num_calibration`` unlabeled images (original view) calibrate each ImageNet
text head (the mean feature of the domain; no labels).

The task is any task ``vimw.data.load_task`` knows (``fmnist``, ``folder:DIR``...); the base
classes are named, or by default the first half of the task's classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from vimw.errors import DataError
from vimw.transfer.cache import LogitCache
from vimw.transfer.vocab import DEFAULT_NUM_LOGITS, DEFAULT_TEMPLATE, build_class_list
from vimw.transfer.zeroshot import ZeroShotClassifier, load_zero_shot

VIEWS = ("orig", "flip", "shift", "flip-shift")
EXTRACTION_SETS = ("shots", "unlabeled")
TEST_SOURCES = ("test", "train")


# -- views ---------------------------------------------------------------------------------------------
def make_view(images: torch.Tensor, view: str) -> torch.Tensor:
    """A deterministic augmented view of uint8 images N x C x H x W (background = 0)."""
    if view not in VIEWS:
        raise DataError(f"unknown view {view!r}; views are {VIEWS}")
    out = images
    if "flip" in view:
        out = torch.flip(out, dims=(-1,))
    if "shift" in view:
        h, w = out.shape[-2:]
        d = max(1, round(0.07 * min(h, w)))  # 2 px on 28 x 28
        shifted = torch.zeros_like(out)
        shifted[..., d:, d:] = out[..., : h - d, : w - d]
        out = shifted
    return out.contiguous()


def view_names(part: str, views: int) -> list[str]:
    """``part`` in its first ``views`` views: ``["pool", "pool/flip", ...]``."""
    return [part if v == "orig" else f"{part}/{v}" for v in VIEWS[:views]]


# -- the configuration -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    """The task, the split and the image counts (shared by every step and seed)."""

    task: str = "fmnist"
    base: tuple[str, ...] = ()  # base class names; () = the first half of the task's classes
    shots: int = 16
    val_per_class: int = 16
    pool_per_class: int = 32
    num_unlabeled: int = 500
    num_align: int = 0  # shots only, as the reference; more unlabeled rows scored lower on validation
    num_calibration: int = 200
    num_test: int = 600
    views: int = 2
    align_views: int = 2
    extraction: str = "shots"  # the reference's; "unlabeled" scored higher on development, and needs those images
    K: int = DEFAULT_NUM_LOGITS  # noqa: N815
    template: str = DEFAULT_TEMPLATE
    data_seed: int = 0
    test_from: str = "test"

    def __post_init__(self) -> None:
        for name in ("shots", "val_per_class", "pool_per_class", "num_unlabeled", "num_calibration", "num_test", "K"):
            if int(getattr(self, name)) < 1:
                raise DataError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.num_align < 0:
            raise DataError(f"num_align must be >= 0, got {self.num_align}")
        for name in ("views", "align_views"):
            if not 1 <= getattr(self, name) <= len(VIEWS):
                raise DataError(f"{name} must be in [1, {len(VIEWS)}], got {getattr(self, name)}")
        if self.extraction not in EXTRACTION_SETS:
            raise DataError(f"extraction must be one of {EXTRACTION_SETS}, got {self.extraction!r}")
        if self.test_from not in TEST_SOURCES:
            raise DataError(f"test_from must be one of {TEST_SOURCES}, got {self.test_from!r}")
        if self.pool_per_class < self.shots + self.val_per_class:
            raise DataError(f"pool_per_class ({self.pool_per_class}) must be >= shots + val_per_class "
                            f"({self.shots} + {self.val_per_class})")
        if max(self.num_align, self.num_calibration) > self.num_unlabeled:
            raise DataError("num_align and num_calibration must be <= num_unlabeled (they are its first images)")
        if "{}" not in self.template:
            raise DataError(f"the prompt template must contain '{{}}', got {self.template!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataConfig:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        if "base" in known:
            known["base"] = tuple(known["base"])
        return cls(**known)


# -- image sets ---------------------------------------------------------------------------------------------
@dataclass
class ImageSets:
    """The fixed image sets of a :class:`DataConfig`, their cache ids and the class lists."""

    config: DataConfig
    class_names: list[str]
    k_names: list[str]
    aux_sha: str
    base: list[int]
    novel: list[int]
    pool_images: torch.Tensor
    pool_labels: torch.Tensor
    unlabeled_images: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    ids: dict[str, str] = field(default_factory=dict)

    def images(self, name: str) -> torch.Tensor:
        """``pool``, ``unlabeled``, ``align`` (first ``num_align`` unlabeled), ``calibration``,
        ``test``, each optionally ``/VIEW``."""
        part, _, view = name.partition("/")
        table = {"pool": self.pool_images, "unlabeled": self.unlabeled_images,
                 "align": self.unlabeled_images[: self.config.num_align],
                 "calibration": self.unlabeled_images[: self.config.num_calibration], "test": self.test_images}
        if part not in table:
            raise DataError(f"unknown image set {name!r}")
        return make_view(table[part], view) if view else table[part]

    def set_id(self, name: str) -> str:
        part, _, view = name.partition("/")
        return self.ids[part] + (f"/{view}" if view else "")

    def split_names(self) -> dict[str, list[str]]:
        return {"base": [self.class_names[i] for i in self.base], "novel": [self.class_names[i] for i in self.novel]}


def _stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    out = []
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        if len(where) < per_class:
            raise DataError(f"class {c} has only {len(where)} images, {per_class} needed")
        out.extend(rng.choice(where, per_class, replace=False).tolist())
    return np.array(sorted(out))


def base_classes(names: Sequence[str], base: Sequence[str]) -> tuple[str, ...]:
    """The base class names (``base``, or the first half of ``names``), checked against the task."""
    chosen = tuple(base) or tuple(names[: len(names) // 2])
    unknown = [b for b in chosen if b not in names]
    if unknown or not chosen or len(set(chosen)) >= len(names) or len(set(chosen)) != len(chosen):
        raise DataError(f"base classes {list(chosen)} must be distinct names forming a non-empty proper subset "
                        f"of the task's classes {list(names)}" + (f" (unknown: {unknown})" if unknown else ""))
    return chosen


def make_sets(cfg: DataConfig) -> ImageSets:
    """The image sets of ``cfg`` (independent of the training seed)."""
    from vimw.data import load_task

    data = load_task(cfg.task, val_fraction=0.0)
    names = list(data.class_names)
    base = base_classes(names, cfg.base)
    rng = np.random.default_rng(cfg.data_seed)
    train_labels = data.train.targets.numpy()
    pool = _stratified(train_labels, cfg.pool_per_class, rng)
    rest = np.setdiff1d(np.arange(len(train_labels)), pool)
    if cfg.num_unlabeled > len(rest):
        raise DataError(f"num_unlabeled={cfg.num_unlabeled} but only {len(rest)} training images are left")
    unlabeled = rng.choice(rest, cfg.num_unlabeled, replace=False)
    scored = data.test if cfg.test_from == "test" else data.train
    if cfg.test_from == "test":
        test = np.sort(rng.choice(len(data.test), min(cfg.num_test, len(data.test)), replace=False))
    else:  # held-out training images: outside the pool and the unlabeled set
        left = np.setdiff1d(rest, unlabeled)
        test = np.sort(rng.choice(left, min(cfg.num_test, len(left)), replace=False))
    k_names, aux_sha = build_class_list(names, cfg.K, seed=0)
    return ImageSets(
        config=cfg, class_names=names, k_names=k_names, aux_sha=aux_sha,
        base=[names.index(b) for b in base], novel=[i for i, n in enumerate(names) if n not in base],
        pool_images=data.train.images[torch.as_tensor(pool)], pool_labels=data.train.targets[torch.as_tensor(pool)],
        unlabeled_images=data.train.images[torch.as_tensor(unlabeled)],
        test_images=scored.images[torch.as_tensor(test)], test_labels=scored.targets[torch.as_tensor(test)],
        ids=_set_ids(cfg, len(test)),
    )


def _set_ids(cfg: DataConfig, num_test: int) -> dict[str, str]:
    """The cache ids of the image sets (what fixes their images, and nothing else)."""
    tag = f"{cfg.task}/d{cfg.data_seed}"
    return {"pool": f"{tag}/pool{cfg.pool_per_class}", "unlabeled": f"{tag}/unlabeled{cfg.num_unlabeled}",
            "align": f"{tag}/unlabeled{cfg.num_unlabeled}[:{cfg.num_align}]",
            "calibration": f"{tag}/unlabeled{cfg.num_unlabeled}[:{cfg.num_calibration}]",
            "test": f"{tag}/test{num_test}" if cfg.test_from == "test" else f"{tag}/heldout-train{num_test}"}


def with_image_use(sets: ImageSets, extraction: str, num_align: int) -> ImageSets:
    """The same image sets, with extraction and alignment using other images (nothing is
    reloaded: only the choice of images changes)."""
    cfg = replace(sets.config, extraction=extraction, num_align=num_align)
    return replace(sets, config=cfg, ids=_set_ids(cfg, len(sets.test_images)))


# -- a training seed's split of the pool ------------------------------------------------------------------
@dataclass(frozen=True)
class SeedSplit:
    """Indices into the pool for one training seed: ``shots`` per base class to train on,
    ``val_per_class`` per class to choose on; ``base_val`` are the base-class validation ones."""

    train: torch.Tensor
    val: torch.Tensor
    base_val: torch.Tensor


def seed_split(sets: ImageSets, seed: int) -> SeedSplit:
    """The training seed's split of the pool, drawn from ``seed`` (the image sets stay fixed)."""
    cfg = sets.config
    rng = np.random.default_rng(1000 + int(seed))
    labels = sets.pool_labels.numpy()
    train_idx, val_idx = [], []
    for cls in np.unique(labels).tolist():
        where = rng.permutation(np.flatnonzero(labels == cls))
        val_idx.extend(where[: cfg.val_per_class].tolist())
        if cls in sets.base:
            train_idx.extend(where[cfg.val_per_class : cfg.val_per_class + cfg.shots].tolist())
    val = torch.as_tensor(sorted(val_idx))
    base_val = val[torch.isin(sets.pool_labels[val], torch.as_tensor(sets.base))]
    return SeedSplit(torch.as_tensor(sorted(train_idx)), val, base_val)


# -- zero-shot passes (calibrated, cached) ----------------------------------------------------------------
_FEATURES: dict[tuple[str, str], torch.Tensor] = {}


def _features(model: Any, set_id: str, images: torch.Tensor) -> torch.Tensor:
    """Image features of a zero-shot model on an image set, memoised in this process."""
    key = (model.name.split("+cal")[0], set_id)
    if key not in _FEATURES:
        _FEATURES[key] = model.encode_images(images, batch_size=64, progress=False)
    return _FEATURES[key]


def calibrate(model: Any, sets: ImageSets, cache: LogitCache) -> None:
    """Calibrate an ImageNet text head on the unlabeled calibration images (cached; no labels)."""
    if not hasattr(model, "calibrate"):
        return
    model.set_feature_mean(None)
    set_id = sets.set_id("calibration")
    mean = cache.get_or_compute(
        model.name, set_id, ["feature-mean"], "calibration",
        lambda: _features(model, set_id, sets.images("calibration")).mean(0).reshape(-1, 1), num_images=model.feature_dim,
    )
    model.set_feature_mean(mean.reshape(-1))


def zero_shot_logits(model: Any, sets: ImageSets, cache: LogitCache, name: str) -> torch.Tensor:
    """The model's K zero-shot logits on an image set (``pool``, ``test``, ``unlabeled/flip``...),
    from the cache or one pass. Calibrate the model first."""
    set_id = sets.set_id(name)
    cfg = sets.config

    def compute() -> torch.Tensor:
        weights, bias = model.class_weights(sets.k_names, cfg.template)
        return model.logits(_features(model, set_id, sets.images(name)), weights, bias)

    return cache.get_or_compute(model.name, set_id, sets.k_names, cfg.template, compute,
                                aux_words_sha256=sets.aux_sha, num_images=len(sets.images(name)))


def model_logits(spec: str, sets: ImageSets, cache: LogitCache, names: Sequence[str],
                 device: str = "cpu") -> tuple[ZeroShotClassifier, dict[str, torch.Tensor]]:
    """The zero-shot model named ``spec``, calibrated on ``sets``, and its logits on each image set."""
    model = load_zero_shot(spec, device=device)
    calibrate(model, sets, cache)
    return model, {n: zero_shot_logits(model, sets, cache, n) for n in names}


def stack_views(logits: dict[str, torch.Tensor], names: Sequence[str], rows: torch.Tensor | None = None) -> torch.Tensor:
    """The logits of several image sets (views) one under the other, optionally only ``rows`` of each."""
    parts = [logits[n] for n in names]
    if rows is not None:
        parts = [p[rows] for p in parts]
    return torch.cat(parts)


def training_rows(name: str, values: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Of a ``pool`` set only the training shots' rows (the pool's other images are for
    validation); any other set whole."""
    return values[train] if name.partition("/")[0] == "pool" else values


def gather(names: Sequence[str], lookup: Callable[[str], torch.Tensor], train: torch.Tensor) -> torch.Tensor:
    """``lookup(name)`` for each image set, :func:`training_rows` of it, one under the other."""
    return torch.cat([training_rows(n, lookup(n), train) for n in names])


def gather_images(sets: ImageSets, names: Sequence[str], train: torch.Tensor) -> list[torch.Tensor]:
    """The images behind :func:`gather`'s rows, one tensor per image set."""
    return [training_rows(n, sets.images(n), train) for n in names]


def extraction_names(data: DataConfig) -> list[str]:
    """The image sets extraction distils on: the shots' views, then (``extraction="unlabeled"``)
    the unlabeled images' views."""
    extra = view_names("unlabeled", data.views) if data.extraction == "unlabeled" else []
    return view_names("pool", data.views) + extra


def alignment_names(data: DataConfig, *, shots: bool = True) -> list[str]:
    """The alignment image sets: the shots' views (unless ``shots=False``), then the
    ``num_align`` unlabeled images' views, all in ``align_views`` views."""
    return ((view_names("pool", data.align_views) if shots else [])
            + (view_names("align", data.align_views) if data.num_align else []))


def alignment_rows(logits: dict[str, torch.Tensor], data: DataConfig, train: torch.Tensor) -> torch.Tensor:
    """A model's alignment rows: the training shots' images (labels unused), then the
    ``num_align`` unlabeled images, in ``align_views`` views."""
    return gather(alignment_names(data), logits.__getitem__, train)


__all__ = [
    "EXTRACTION_SETS",
    "TEST_SOURCES",
    "VIEWS",
    "DataConfig",
    "ImageSets",
    "SeedSplit",
    "alignment_names",
    "alignment_rows",
    "base_classes",
    "calibrate",
    "extraction_names",
    "gather",
    "gather_images",
    "training_rows",
    "make_sets",
    "make_view",
    "model_logits",
    "seed_split",
    "stack_views",
    "view_names",
    "with_image_use",
    "zero_shot_logits",
]

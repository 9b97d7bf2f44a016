"""The base-to-novel protocol that runs TransMiter's steps and its baselines on one task.

Image sets are fixed by the task, ``data_seed`` and the counts (never by the training seed),
so each zero-shot model's pass over each set is computed once, stored in a
:class:`~vimw.transfer.cache.LogitCache` and shared by every seed and method:

* a labelled *pool* (``pool_per_class`` training images per class): each seed draws its
  ``shots`` base-class training images and ``val_per_class`` validation images per class;
* an *unlabeled* set (``num_unlabeled`` training images outside the pool), seen by the weak
  model only: extraction distils the fine-tuned weak model on it, no labels;
* the *alignment* set, seen by both zero-shot models: the seed's training shots (their images
  only, never their labels; the reference aligns on its few-shot set) plus the first
  ``num_align`` unlabeled images;
* ``num_test`` test images.

Every extraction and alignment image comes in ``views`` deterministic augmented views
(:data:`VIEWS`: the image, its mirror image, shifted copies), as the reference flattens its
augmented views into both steps. The first ``num_calibration`` unlabeled images (original
view) calibrate each ImageNet text head (the mean feature of the domain; no labels).

Two validation protocols choose every knob - teacher epochs, Procrustes lambda, the blends'
alpha, refinement settings - by the one selection rule (``vimw.evaluation.selection``):
``"all"`` (validation images of base and novel classes, score = HM) and ``"base"`` (base
classes only: novel labels are never seen). Test images are only ever scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vimw.errors import DataError, VimwError
from vimw.modules.registry import DEFAULT_MODULE_KIND
from vimw.transfer.cache import LogitCache
from vimw.transfer.vocab import DEFAULT_NUM_LOGITS, DEFAULT_TEMPLATE, build_class_list

FMNIST_BASE = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat")
VIEWS = ("orig", "flip", "shift", "flip-shift")
DEFAULT_WEAK = "efficientnet_lite0@96+invert"
DEFAULT_STRONG = "efficientnet_lite2@160"


# -- models ------------------------------------------------------------------------------------------
def load_zero_shot(spec: str, *, device: str = "cpu"):
    """A zero-shot model from a spec: ``efficientnet_lite0@64[+invert]`` or ``hf:<name or dir>``."""
    from vimw.transfer.zeroshot import HFCLIPZeroShot, ImageNetTextHead

    text = str(spec)
    if text.startswith("hf:"):
        return HFCLIPZeroShot(text[3:], device=device)
    invert = text.endswith("+invert")
    arch, _, size = text.removesuffix("+invert").partition("@")
    try:
        image_size = int(size) if size else None
    except ValueError:
        raise VimwError(f"bad model spec {spec!r}: expected ARCH@SIZE[+invert], e.g. {DEFAULT_WEAK}") from None
    if image_size is not None and image_size < 16:
        raise VimwError(f"bad model spec {spec!r}: the image size must be at least 16")
    return ImageNetTextHead(arch, image_size, invert=invert, device=device)


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


# -- the configuration -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    """The task, the split and the image counts (shared by every step and seed)."""

    task: str = "fmnist"
    base: tuple[str, ...] = FMNIST_BASE
    shots: int = 16
    val_per_class: int = 16
    pool_per_class: int = 32
    num_unlabeled: int = 500
    num_align: int = 0  # shots only, as the reference; more unlabeled rows scored lower on validation
    num_calibration: int = 200
    num_test: int = 600
    views: int = 2
    K: int = DEFAULT_NUM_LOGITS  # noqa: N815
    template: str = DEFAULT_TEMPLATE
    data_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("shots", "val_per_class", "pool_per_class", "num_unlabeled", "num_calibration", "num_test", "K"):
            if int(getattr(self, name)) < 1:
                raise DataError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.num_align < 0:
            raise DataError(f"num_align must be >= 0, got {self.num_align}")
        if not 1 <= self.views <= len(VIEWS):
            raise DataError(f"views must be in [1, {len(VIEWS)}], got {self.views}")
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
    def from_dict(cls, values: dict[str, Any]) -> "DataConfig":
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


def _stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    out = []
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        if len(where) < per_class:
            raise DataError(f"class {c} has only {len(where)} images, {per_class} needed")
        out.extend(rng.choice(where, per_class, replace=False).tolist())
    return np.array(sorted(out))


def make_sets(cfg: DataConfig) -> ImageSets:
    """The image sets of ``cfg`` (independent of the training seed)."""
    from vimw.data import load_task

    data = load_task(cfg.task, val_fraction=0.0)
    names = list(data.class_names)
    unknown = [b for b in cfg.base if b not in names]
    if unknown or not cfg.base or len(set(cfg.base)) >= len(names) or len(set(cfg.base)) != len(cfg.base):
        raise DataError(f"base classes {list(cfg.base)} must be distinct names forming a non-empty proper subset "
                        f"of the task's classes {names}" + (f" (unknown: {unknown})" if unknown else ""))
    rng = np.random.default_rng(cfg.data_seed)
    train_labels = data.train.targets.numpy()
    pool = _stratified(train_labels, cfg.pool_per_class, rng)
    rest = np.setdiff1d(np.arange(len(train_labels)), pool)
    if cfg.num_unlabeled > len(rest):
        raise DataError(f"num_unlabeled={cfg.num_unlabeled} but only {len(rest)} training images are left")
    unlabeled = rng.choice(rest, cfg.num_unlabeled, replace=False)
    test = np.sort(rng.choice(len(data.test), min(cfg.num_test, len(data.test)), replace=False))
    k_names, aux_sha = build_class_list(names, cfg.K, seed=0)
    tag = f"{cfg.task}/d{cfg.data_seed}"
    ids = {"pool": f"{tag}/pool{cfg.pool_per_class}", "unlabeled": f"{tag}/unlabeled{cfg.num_unlabeled}",
           "align": f"{tag}/unlabeled{cfg.num_unlabeled}[:{cfg.num_align}]",
           "calibration": f"{tag}/unlabeled{cfg.num_unlabeled}[:{cfg.num_calibration}]", "test": f"{tag}/test{len(test)}"}
    return ImageSets(
        config=cfg, class_names=names, k_names=k_names, aux_sha=aux_sha,
        base=[names.index(b) for b in cfg.base], novel=[i for i, n in enumerate(names) if n not in cfg.base],
        pool_images=data.train.images[torch.as_tensor(pool)], pool_labels=data.train.targets[torch.as_tensor(pool)],
        unlabeled_images=data.train.images[torch.as_tensor(unlabeled)],
        test_images=data.test.images[torch.as_tensor(test)], test_labels=data.test.targets[torch.as_tensor(test)],
        ids=ids,
    )


def seed_split(sets: ImageSets, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices: ``shots`` per base class, validation indices: ``val_per_class`` per
    class) into the pool, drawn from ``seed``."""
    cfg = sets.config
    rng = np.random.default_rng(1000 + int(seed))
    labels = sets.pool_labels.numpy()
    train_idx, val_idx = [], []
    for cls in np.unique(labels).tolist():
        where = rng.permutation(np.flatnonzero(labels == cls))
        val_idx.extend(where[: cfg.val_per_class].tolist())
        if cls in sets.base:
            train_idx.extend(where[cfg.val_per_class : cfg.val_per_class + cfg.shots].tolist())
    return torch.as_tensor(sorted(train_idx)), torch.as_tensor(sorted(val_idx))


# -- cached zero-shot passes ----------------------------------------------------------------------------------
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


def view_names(part: str, views: int) -> list[str]:
    """``part`` in its first ``views`` views: ``["pool", "pool/flip", ...]``."""
    return [part if v == "orig" else f"{part}/{v}" for v in VIEWS[:views]]


def measure_pairs(cfg: DataConfig, weak: Sequence[str], strong: Sequence[str], cache_dir: str | Path,
                  *, device: str = "cpu", log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Zero-shot base / novel / HM of candidate models on the *validation pool* (never test
    images), with the seconds per image of one pass, to choose a weak / strong pair."""
    cache = LogitCache(cache_dir)
    sets = make_sets(cfg)
    rows = []
    for role, specs in (("weak", weak), ("strong", strong)):
        for spec in specs:
            model = load_zero_shot(spec, device=device)
            calibrate(model, sets, cache)
            logits = zero_shot_logits(model, sets, cache, "pool")
            from vimw.transfer.scoring import base_novel_scores

            scores = base_novel_scores(logits[:, : len(sets.class_names)], sets.pool_labels, sets.base, sets.novel)
            probe = sets.pool_images[:16]
            started = time.perf_counter()
            model.encode_images(probe, batch_size=16, progress=False)
            per_image = (time.perf_counter() - started) / len(probe)
            rows.append({"role": role, "model": spec, "name": model.name, **scores, "seconds_per_image": per_image})
            log(f"  {role:6s} {spec:32s} base {scores['base']:.3f} novel {scores['novel']:.3f} HM {scores['hm']:.3f} "
                f"({1000 * per_image:.0f} ms / image)")
    return rows


# -- the protocol -----------------------------------------------------------------------------------------------
def _teacher_config() -> "TeacherConfig":
    from vimw.transfer.teacher import TeacherConfig

    return TeacherConfig()


def _extraction_config() -> "ExtractionConfig":
    from vimw.transfer.steps import ExtractionConfig

    return ExtractionConfig()


def _refine_config() -> "RefineConfig":
    from vimw.transfer.steps import RefineConfig

    return RefineConfig()


def _lambda_grid() -> tuple[float, ...]:
    from vimw.transfer.steps import LAMBDA_GRID

    return LAMBDA_GRID


def _alpha_grid() -> tuple[float, ...]:
    from vimw.transfer.scoring import ALPHA_GRID

    return ALPHA_GRID


FIXED_ALPHA = {"transferred": 1.0, "transmiter_plus": 1.0, "proxy": 1.0, "ensemble": 0.5}


@dataclass(frozen=True)
class ProtocolConfig:
    """Everything one run of the protocol depends on; every default lives here."""

    data: DataConfig = field(default_factory=DataConfig)
    weak: str = DEFAULT_WEAK
    strong: str = DEFAULT_STRONG
    plugin: str = DEFAULT_MODULE_KIND  # a module kind, or a zoo directory (ViM aggregation) for the teacher
    teacher: Any = field(default_factory=_teacher_config)
    extraction: Any = field(default_factory=_extraction_config)
    refine: Any = field(default_factory=_refine_config)
    lambdas: tuple[float, ...] = field(default_factory=_lambda_grid)
    alphas: tuple[float, ...] = field(default_factory=_alpha_grid)
    protocols: tuple[str, ...] = ("all", "base")
    strong_ft: bool = True
    teacher_ablation: bool = True  # also fine-tune the teacher without the consistency term
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Shared:
    """What every seed shares: the image sets, the two models and their cached logits."""

    sets: ImageSets
    weak: Any
    strong: Any
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def prepare(cfg: ProtocolConfig, cache_dir: str | Path, log: Callable[[str], None] = print) -> Shared:
    """Image sets, calibrated zero-shot models and every zero-shot pass (cached)."""
    cache = LogitCache(cache_dir)
    sets = make_sets(cfg.data)
    shared = Shared(sets, load_zero_shot(cfg.weak, device=cfg.device), load_zero_shot(cfg.strong, device=cfg.device))
    v = cfg.data.views
    wanted = {"weak": view_names("pool", v) + view_names("unlabeled", v) + ["test"],
              "strong": view_names("pool", v) + (view_names("align", v) if cfg.data.num_align else []) + ["test"]}
    for role in ("weak", "strong"):
        model = getattr(shared, role)
        started = time.perf_counter()
        calibrate(model, sets, cache)
        for name in wanted[role]:
            shared.logits[f"{role}/{name}"] = zero_shot_logits(model, sets, cache, name)
        shared.seconds[f"{role}_zero_shot_passes"] = time.perf_counter() - started
        if role == "weak" and cfg.data.num_align:  # the alignment images are the first unlabeled ones
            for name in view_names("align", v):
                source = name.replace("align", "unlabeled", 1)
                shared.logits[f"weak/{name}"] = shared.logits[f"weak/{source}"][: cfg.data.num_align]
        log(f"  {role} zero-shot logits ({model.name}): {shared.seconds[f'{role}_zero_shot_passes']:.1f} s (0 when cached)")
    # warm up, so that the first seed's timed strong passes do not pay for first-call set-up
    shared.strong.encode_images(sets.pool_images[:4], batch_size=4, progress=False)
    return shared


def _stack(logits: dict[str, torch.Tensor], role: str, names: Sequence[str], rows: torch.Tensor | None = None) -> torch.Tensor:
    parts = [logits[f"{role}/{n}"] for n in names]
    if rows is not None:
        parts = [p[rows] for p in parts]
    return torch.cat(parts)


def run_seed(cfg: ProtocolConfig, shared: Shared, seed: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every method for one seed under each validation protocol and with fixed alphas."""
    from vimw.transfer.scoring import (base_novel_scores, blend_logits, ensemble_logits, proxy_logits,
                                       select_alpha, validation_metrics)
    from vimw.transfer.steps import adapter_logits, apply_adapter, extract_adapter, refine_adapter, select_lambda
    from vimw.transfer.teacher import FineTunedZeroShot, finetune_teacher, make_plugin

    sets, lg, data = shared.sets, shared.logits, cfg.data
    c = len(sets.class_names)
    base, novel = sets.base, sets.novel
    train_idx, val_idx = seed_split(sets, seed)
    y_train, y_val = sets.pool_labels[train_idx], sets.pool_labels[val_idx]
    base_val = val_idx[torch.isin(y_val, torch.as_tensor(base))]
    pool_views = view_names("pool", data.views)
    wz_test, sz_test = lg["weak/test"][:, :c], lg["strong/test"][:, :c]
    sz_val = lg["strong/pool"][val_idx]
    results: dict[str, dict[str, dict[str, float]]] = {p: {} for p in (*cfg.protocols, "fixed")}
    choices: dict[str, Any] = {p: {} for p in (*cfg.protocols, "fixed")}
    seconds: dict[str, float] = {}

    def score(protocol: str, name: str, test_logits: torch.Tensor, secs: float) -> None:
        row = {**base_novel_scores(test_logits[:, :c], sets.test_labels, base, novel), "seconds": round(secs, 2)}
        results[protocol][name] = row
        log(f"  seed {seed} [{protocol:5s}] {name:24s} base {row['base']:.3f} novel {row['novel']:.3f} "
            f"HM {row['hm']:.3f} ({secs:.1f} s)")

    def score_all(name: str, test_logits: torch.Tensor, secs: float) -> None:
        for p in results:
            score(p, name, test_logits, secs)

    score_all("weak_zero_shot", wz_test, 0.0)
    score_all("strong_zero_shot", sz_test, 0.0)

    # 1. the teacher: the weak model fine-tuned on the base classes (epoch on base-class validation:
    #    the weak model's owner never sees novel labels), with and without the consistency term
    def fine_tune(head, config, protocol, val, extra=()):
        plugin, plugin_info = make_plugin(head.backbone, cfg.plugin if head is shared.weak else DEFAULT_MODULE_KIND, seed=seed)
        model = FineTunedZeroShot(head, sets.class_names, plugin.to(cfg.device), data.template).to(cfg.device)
        return finetune_teacher(model, sets.pool_images[train_idx], y_train, sets.pool_images[val], sets.pool_labels[val],
                                base=base, novel=novel, protocol=protocol, config=config, extra_protocols=extra)

    teacher_cfg = replace(cfg.teacher, seed=seed)
    started = time.perf_counter()
    teacher, t_info = fine_tune(shared.weak, teacher_cfg, "base", base_val)
    seconds["teacher"] = time.perf_counter() - started
    choices["teacher"] = {"epoch": t_info["best_epoch"], "val": t_info["best_metrics"], "config": teacher_cfg.to_dict()}
    score_all("teacher", teacher.predict(sets.test_images), seconds["teacher"])
    if cfg.teacher_ablation and teacher_cfg.consistency > 0:
        plain, p_info = fine_tune(shared.weak, replace(teacher_cfg, consistency=0.0), "base", base_val)
        choices["teacher_no_consistency"] = {"epoch": p_info["best_epoch"], "val": p_info["best_metrics"]}
        score_all("teacher_no_consistency", plain.predict(sets.test_images), p_info["seconds"])
        del plain

    # 2. extraction, no labels: the teacher's logits on the unlabeled images and their views
    started = time.perf_counter()
    unl_views = view_names("unlabeled", data.views)
    teacher_unl = torch.cat([teacher.predict(sets.images(n)) for n in unl_views])
    teacher_pass = time.perf_counter() - started
    adapter, x_info = extract_adapter(_stack(lg, "weak", unl_views), teacher_unl,
                                      config=replace(cfg.extraction, seed=seed))
    seconds["extraction"] = time.perf_counter() - started
    teacher_val = teacher.predict(sets.pool_images[val_idx])
    src_val = adapter_logits(adapter, lg["weak/pool"][val_idx])
    fidelity = {"teacher_val": validation_metrics(teacher_val, y_val, base, novel, "all"),
                "source_adapter_val": validation_metrics(src_val, y_val, base, novel, "all"),
                "teacher_pass_seconds": teacher_pass, "rows": len(teacher_unl)}
    choices["extraction"] = fidelity
    score_all("source_adapter", adapter_logits(adapter, lg["weak/test"]), seconds["extraction"])
    teacher_test = teacher.predict(sets.test_images)
    del teacher

    # 3. apply: align on the training shots' images (labels unused) and the first num_align
    #    unlabeled images, every view; strong passes counted at the measured cost per image
    align_src = torch.cat([_stack(lg, "weak", pool_views, train_idx)]
                          + ([_stack(lg, "weak", view_names("align", data.views))] if data.num_align else []))
    align_tgt = torch.cat([_stack(lg, "strong", pool_views, train_idx)]
                          + ([_stack(lg, "strong", view_names("align", data.views))] if data.num_align else []))
    # the logits come from the cache; the strong model's passes over these images are timed
    # here, in this seed's run, as the cost TransMiter pays on the target side
    strong_inputs = [sets.images(n)[train_idx] for n in pool_views] + [sets.pool_images[val_idx]] + (
        [sets.images(n) for n in view_names("align", data.views)] if data.num_align else [])
    started = time.perf_counter()
    for images in strong_inputs:
        shared.strong.encode_images(images, batch_size=64, progress=False)
    seconds["strong_passes"] = time.perf_counter() - started
    strong_images = sum(len(images) for images in strong_inputs)  # alignment rows + validation images
    choices["alignment"] = {"rows": len(align_tgt), "strong_images_passed": strong_images}

    def score_blend(protocol: str, method: str, val_logits: torch.Tensor, test_logits: torch.Tensor,
                    method_secs: float) -> None:
        """Score ``method`` blended with the strong zero-shot logits, alpha chosen on validation.

        The blend's time is the method's plus the alpha search.
        """
        started = time.perf_counter()
        alpha, cands = select_alpha(lambda a: blend_logits(val_logits, sz_val[:, :c], a), y_val, base, novel,
                                    protocol=protocol, grid=cfg.alphas)
        choices[protocol][f"{method}_alpha"] = {"chosen": alpha, "candidates": cands}
        score(protocol, f"{method}_blend", blend_logits(test_logits, sz_test, alpha),
              method_secs + time.perf_counter() - started)

    for protocol in cfg.protocols:
        pc = choices[protocol]
        started = time.perf_counter()
        lam, lam_candidates = select_lambda(adapter, align_src, align_tgt, lg["strong/pool"][val_idx], y_val,
                                            base=base, novel=novel, protocol=protocol, grid=cfg.lambdas)
        moved = apply_adapter(adapter, align_src, align_tgt, lam)
        pc["lambda"] = {"chosen": lam, "candidates": lam_candidates}
        transfer_secs = seconds["extraction"] + seconds["strong_passes"] + time.perf_counter() - started
        moved_val = adapter_logits(moved, lg["strong/pool"][val_idx])
        moved_test = adapter_logits(moved, lg["strong/test"])
        score(protocol, "transferred", moved_test, transfer_secs)
        score_blend(protocol, "transferred", moved_val, moved_test, transfer_secs)

        # 4. TransMiter+: refine on the training shots' strong logits (every view)
        started = time.perf_counter()
        plus, r_info = refine_adapter(moved, _stack(lg, "strong", pool_views, train_idx),
                                      y_train.repeat(len(pool_views)), lg["strong/pool"][val_idx], y_val,
                                      base=base, novel=novel, protocol=protocol, config=replace(cfg.refine, seed=seed))
        pc["refine"] = {k: v for k, v in r_info.items() if k != "config"}
        plus_secs = transfer_secs + time.perf_counter() - started
        plus_val, plus_test = adapter_logits(plus, lg["strong/pool"][val_idx]), adapter_logits(plus, lg["strong/test"])
        score(protocol, "transmiter_plus", plus_test, plus_secs)
        score_blend(protocol, "transmiter_plus", plus_val, plus_test, plus_secs)
        seconds[f"transmiter_plus/{protocol}"] = plus_secs

        # 5. logit arithmetic: need the fine-tuned weak model on every image at inference
        for name, fn in (("proxy", lambda a, s, f, w: proxy_logits(s, f, w, a)),
                         ("ensemble", lambda a, s, f, w: ensemble_logits(f, s, a))):
            started = time.perf_counter()
            alpha, cands = select_alpha(lambda a: fn(a, sz_val[:, :c], teacher_val, lg["weak/pool"][val_idx][:, :c]),
                                        y_val, base, novel, protocol=protocol, grid=cfg.alphas)
            pc[f"{name}_alpha"] = {"chosen": alpha, "candidates": cands}
            score(protocol, name, fn(alpha, sz_test, teacher_test, wz_test), time.perf_counter() - started)

        if protocol == "base":  # the fixed-alpha rows reuse the choices that never saw a novel label
            score("fixed", "transferred", moved_test, transfer_secs)
            score("fixed", "transmiter_plus", plus_test, plus_secs)
            score("fixed", "proxy", proxy_logits(sz_test, teacher_test, wz_test, FIXED_ALPHA["proxy"]), 0.0)
            score("fixed", "ensemble", ensemble_logits(teacher_test, sz_test, FIXED_ALPHA["ensemble"]), 0.0)
            choices["fixed"] = {"alpha": FIXED_ALPHA, "lambda_and_refine_from": "base"}

    # 6. the costly upper reference: the strong model fine-tuned with the teacher's recipe
    if cfg.strong_ft:
        first, *others = cfg.protocols
        started = time.perf_counter()
        strong_ft, s_info = fine_tune(shared.strong, teacher_cfg, first, val_idx, extra=tuple(others))
        seconds["strong_fine_tuning"] = time.perf_counter() - started
        test_first = strong_ft.predict(sets.test_images)
        score(first, "strong_fine_tuned", test_first, seconds["strong_fine_tuning"])
        choices[first]["strong_fine_tuning"] = {"epoch": s_info["best_epoch"], "val": s_info["best_metrics"]}
        for p in others:
            kept = s_info["states"][p]
            choices[p]["strong_fine_tuning"] = {"epoch": kept["epoch"], "val": kept["metrics"]}
            if kept["epoch"] != s_info["best_epoch"]:
                strong_ft.plugin.load_state_dict(kept["state"])
                score(p, "strong_fine_tuned", strong_ft.predict(sets.test_images), seconds["strong_fine_tuning"])
            else:
                score(p, "strong_fine_tuned", test_first, seconds["strong_fine_tuning"])
        if "base" in cfg.protocols:
            results["fixed"]["strong_fine_tuned"] = results["base"]["strong_fine_tuned"]
    return {"seed": seed, "rows": results, "choices": choices, "seconds": seconds,
            "counts": {"train": len(train_idx), "val": len(val_idx)}}


METHODS = ("weak_zero_shot", "teacher_no_consistency", "teacher", "strong_zero_shot", "source_adapter", "transferred",
           "transferred_blend", "transmiter_plus", "transmiter_plus_blend", "proxy", "ensemble", "strong_fine_tuned")
LABELS = {
    "weak_zero_shot": "weak zero-shot", "teacher_no_consistency": "weak fine-tuned, no consistency term",
    "teacher": "weak fine-tuned (the teacher)", "strong_zero_shot": "strong zero-shot",
    "source_adapter": "weak + extracted adapter", "transferred": "TransMiter transferred (no backprop), alpha = 1",
    "transferred_blend": "TransMiter transferred + blend", "transmiter_plus": "TransMiter+ (base shots), alpha = 1",
    "transmiter_plus_blend": "TransMiter+ + blend", "proxy": "proxy (logit arithmetic)",
    "ensemble": "ensemble (logit arithmetic)", "strong_fine_tuned": "strong fine-tuned (upper reference)",
}


def summarise(per_seed: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and std over seeds of base, novel, HM and seconds, per protocol and method."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for protocol in per_seed[0]["rows"]:
        table: dict[str, dict[str, float]] = {}
        for method in METHODS:
            runs = [r["rows"][protocol][method] for r in per_seed if method in r["rows"][protocol]]
            if not runs:
                continue
            row: dict[str, float] = {"seeds": len(runs)}
            for key in ("base", "novel", "hm", "seconds"):
                values = np.array([r[key] for r in runs], dtype=float)
                row[key], row[f"{key}_std"] = float(values.mean()), float(values.std())
            row["hm_per_seed"] = [r["hm"] for r in runs]
            table[method] = row
        out[protocol] = table
    return out


def format_table(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| method | base | novel | HM | HM per seed | seconds |", "| --- | ---: | ---: | ---: | --- | ---: |"]
    for method, row in summary.items():
        def pm(k: str) -> str:
            return f"{100 * row[k]:.1f} ± {100 * row[k + '_std']:.1f}" if row["seeds"] > 1 else f"{100 * row[k]:.1f}"

        per_seed = " / ".join(f"{100 * v:.1f}" for v in row["hm_per_seed"])
        lines.append(f"| {LABELS.get(method, method)} | {pm('base')} | {pm('novel')} | {pm('hm')} | {per_seed} | "
                     f"{row['seconds']:.1f} |")
    return "\n".join(lines)


def headline_protocol(protocols: Sequence[str]) -> str:
    """The row set a single summary shows: base-class validation (the stricter) when it ran."""
    return "base" if "base" in protocols else protocols[0]


def run_protocol(cfg: ProtocolConfig, cache_dir: str | Path, seeds: Sequence[int] = (0,),
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Prepare the shared logits once, run every seed, return the per-seed runs and the summary."""
    if not seeds:
        raise DataError("no seeds given")
    started = time.perf_counter()
    shared = prepare(cfg, cache_dir, log)
    per_seed = [run_seed(cfg, shared, seed, log) for seed in seeds]
    summaries = summarise(per_seed)
    ratios: dict[str, list[float]] = {}
    for r in per_seed:
        if "strong_fine_tuning" in r["seconds"]:
            for p in cfg.protocols:
                plus, ft = r["seconds"][f"transmiter_plus/{p}"], r["seconds"]["strong_fine_tuning"]
                ratios.setdefault(p, []).append(plus / ft)
                # extraction is done once per weak adaptation, whatever the target: without it
                ratios.setdefault(f"{p} (target side)", []).append((plus - r["seconds"]["extraction"]) / ft)
    sets = shared.sets
    from vimw.transfer.scoring import json_safe

    return json_safe({
        "config": {**cfg.to_dict(), "task": cfg.data.task}, "seeds": list(seeds), "per_seed": per_seed,
        "summaries": summaries, "summary": summaries[headline_protocol(cfg.protocols)],
        "split": {"base": [sets.class_names[i] for i in sets.base], "novel": [sets.class_names[i] for i in sets.novel]},
        "models": {"weak": shared.weak.name, "strong": shared.strong.name},
        "shared_seconds": shared.seconds,
        "strong_seconds_per_image": float(np.mean([r["seconds"]["strong_passes"] / r["choices"]["alignment"]
                                                   ["strong_images_passed"] for r in per_seed])),
        "plus_over_strong_ft": {p: float(np.mean(v)) for p, v in ratios.items()},
        "seconds": time.perf_counter() - started,
    })


def demo_config() -> ProtocolConfig:
    """The demo's small run: one seed, every choice on base-class validation images only (novel
    labels never seen), no strong fine-tuning."""
    base = ProtocolConfig()
    data = replace(base.data, shots=8, val_per_class=8, pool_per_class=16, num_unlabeled=200,
                   num_calibration=50, num_test=300, views=1)
    return replace(base, data=data, protocols=("base",), strong_ft=False, teacher_ablation=False)


def format_demo(result: dict[str, Any]) -> str:
    """The demo's lines: the split, then base / novel / HM of the methods that tell the story."""
    protocol = result["config"]["protocols"][0]
    rows = result["summaries"][protocol]
    choice = result["per_seed"][0]["choices"][protocol]
    lines = [f"  {result['models']['weak']} -> {result['models']['strong']}",
             f"  base: {', '.join(result['split']['base'])}; novel: {', '.join(result['split']['novel'])}",
             f"  {'':48s} {'base':>6s} {'novel':>6s} {'HM':>6s}"]
    for method in ("weak_zero_shot", "teacher", "strong_zero_shot", "transferred", "transferred_blend",
                   "transmiter_plus", "transmiter_plus_blend", "proxy", "ensemble"):
        if method in rows:
            r = rows[method]
            lines.append(f"  {LABELS[method]:48s} {100 * r['base']:6.1f} {100 * r['novel']:6.1f} {100 * r['hm']:6.1f}")
    where = "base-class validation images" if protocol == "base" else "validation images of all classes"
    lines.append(f"  (chosen on {where}: lambda/image {choice['lambda']['chosen']:g}, refinement epoch "
                 f"{choice['refine']['epoch']}, blend alpha {choice['transferred_alpha']['chosen']:g} / "
                 f"{choice['transmiter_plus_alpha']['chosen']:g}; no test image was used for any choice)")
    return "\n".join(lines)

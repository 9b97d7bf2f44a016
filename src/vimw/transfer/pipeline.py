"""The whole weak -> strong story on one task, reused by ``vimw transfer evaluate``, the demo and
``benchmarks/transfer.py``.

Image sets are fixed by the task and the counts (not by the seed), so every zero-shot pass is
cached once in a :class:`~vimw.transfer.cache.LogitCache` and shared by all seeds and methods:

* a labelled pool (``pool_per_class`` training images per class): each seed draws its
  ``shots`` base-class training images and ``val_per_class`` validation images per class from it;
* an unlabeled extraction set (``num_extract`` training images, weak model only; its first
  ``num_align`` images are the alignment set seen by both zero-shot models);
* ``num_test`` test images.

Model selection (fine-tuning lr/epoch: base-class validation accuracy; Procrustes lambda,
TransMiter+ lr/epochs, proxy/ensemble alpha: validation HM) never sees test images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vimw.errors import DataError, VimwError
from vimw.modules.registry import DEFAULT_MODULE_KIND
from vimw.transfer.cache import LogitCache
from vimw.transfer.extraction import ExtractionConfig, RefineConfig, extract_adapter, refine_adapter, transfer_adapter
from vimw.transfer.protocol import (
    FineTunedZeroShot,
    base_novel_scores,
    cached_calibration,
    cached_logits,
    choose_alpha,
    ensemble_logits,
    finetune_zero_shot,
    make_plugin,
    proxy_logits,
)
from vimw.transfer.vocab import DEFAULT_TEMPLATE, build_class_list

METHODS = ("weak_zero_shot", "weak_fine_tuned", "strong_zero_shot", "source_adapter", "transferred",
           "transmiter_plus", "proxy", "ensemble", "strong_fine_tuned")
FMNIST_BASE = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat")


def load_zero_shot(spec: str, *, device: str = "cpu"):
    """A zero-shot model from a spec: ``efficientnet_lite0@64[+invert]`` or ``hf:<name or dir>``."""
    from vimw.transfer.zeroshot import HFCLIPZeroShot, ImageNetTextHead

    text = str(spec)
    if text.startswith("hf:"):
        return HFCLIPZeroShot(text[3:], device=device)
    invert = text.endswith("+invert")
    text = text.removesuffix("+invert")
    arch, _, size = text.partition("@")
    try:
        image_size = int(size) if size else None
    except ValueError:
        raise VimwError(f"bad model spec {spec!r}: expected ARCH@SIZE[+invert], e.g. efficientnet_lite0@64+invert") from None
    return ImageNetTextHead(arch, image_size, invert=invert, device=device)


@dataclass
class ProtocolConfig:
    task: str = "fmnist"
    base: tuple[str, ...] = FMNIST_BASE
    weak: str = "efficientnet_lite0@64+invert"
    strong: str = "efficientnet_lite2@224"
    plugin: str = DEFAULT_MODULE_KIND  # a module kind, or a zoo directory (ViM aggregation)
    shots: int = 16
    val_per_class: int = 16
    pool_per_class: int = 32
    num_extract: int = 1000
    num_align: int = 300
    num_test: int = 1000
    K: int = 1024  # noqa: N815
    template: str = DEFAULT_TEMPLATE
    weak_lrs: tuple[float, ...] = (1e-3, 3e-3)
    weak_epochs: int = 10
    strong_ft: bool = True
    strong_lrs: tuple[float, ...] = (3e-3,)
    strong_epochs: int = 5
    lambdas: tuple[float, ...] = (0.1, 1.0, 10.0)
    refine_lrs: tuple[float, ...] = (1e-4, 1e-3)
    refine_epochs: tuple[int, ...] = (5, 20)
    extraction_epochs: int = 10
    data_seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SharedData:
    """Everything the seeds share: image sets, class lists and the cached zero-shot logits."""

    class_names: list[str]
    k_names: list[str]
    aux_sha: str
    base: list[int]
    novel: list[int]
    pool_images: torch.Tensor
    pool_labels: torch.Tensor
    extract_images: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    weak: Any
    strong: Any
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator, exclude: set[int] = frozenset()) -> np.ndarray:
    out = []
    for c in np.unique(labels):
        where = np.array([i for i in np.flatnonzero(labels == c) if i not in exclude])
        if len(where) < per_class:
            raise DataError(f"class {c} has only {len(where)} images, {per_class} needed")
        out.extend(rng.choice(where, per_class, replace=False).tolist())
    return np.array(sorted(out))


def make_sets(cfg: ProtocolConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """The fixed image sets of a protocol (independent of the seed) and their cache ids."""
    from vimw.data import load_task

    data = load_task(cfg.task, val_fraction=0.0)
    names = list(data.class_names)
    unknown = [b for b in cfg.base if b not in names]
    if unknown or not cfg.base or len(cfg.base) >= len(names):
        raise DataError(f"base classes {list(cfg.base)} must be a non-empty proper subset of {names}")
    if cfg.pool_per_class < cfg.shots + cfg.val_per_class:
        raise DataError("pool_per_class must be >= shots + val_per_class")
    if cfg.num_align > cfg.num_extract:
        raise DataError("num_align must be <= num_extract (the alignment set is a prefix of the extraction set)")
    rng = np.random.default_rng(cfg.data_seed)
    train_labels = data.train.targets.numpy()
    pool = _stratified(train_labels, cfg.pool_per_class, rng)
    rest = np.setdiff1d(np.arange(len(train_labels)), pool)
    extract = rng.choice(rest, cfg.num_extract, replace=False)
    test = np.sort(rng.choice(len(data.test), min(cfg.num_test, len(data.test)), replace=False))
    k_names, aux_sha = build_class_list(names, cfg.K, seed=0)
    tag = f"{cfg.task}/d{cfg.data_seed}"
    ids = {"pool": f"{tag}/pool{cfg.pool_per_class}", "extract": f"{tag}/extract{cfg.num_extract}",
           "align": f"{tag}/extract{cfg.num_extract}[:{cfg.num_align}]", "test": f"{tag}/test{len(test)}"}
    sets = {
        "class_names": names, "k_names": k_names, "aux_sha": aux_sha,
        "base": [names.index(b) for b in cfg.base], "novel": [i for i, n in enumerate(names) if n not in cfg.base],
        "pool_images": data.train.images[torch.as_tensor(pool)], "pool_labels": data.train.targets[torch.as_tensor(pool)],
        "extract_images": data.train.images[torch.as_tensor(extract)],
        "test_images": data.test.images[torch.as_tensor(test)], "test_labels": data.test.targets[torch.as_tensor(test)],
    }
    return sets, ids


def seed_split(pool_labels: torch.Tensor, base: Sequence[int], cfg: ProtocolConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices: ``shots`` per base class, val indices: ``val_per_class`` per class) into the pool."""
    rng = np.random.default_rng(1000 + seed)
    labels = pool_labels.numpy()
    train_idx, val_idx = [], []
    for cls in np.unique(labels).tolist():
        where = rng.permutation(np.flatnonzero(labels == cls))
        val_idx.extend(where[: cfg.val_per_class].tolist())
        if cls in base:
            train_idx.extend(where[cfg.val_per_class : cfg.val_per_class + cfg.shots].tolist())
    return torch.as_tensor(sorted(train_idx)), torch.as_tensor(sorted(val_idx))


def zero_shot_pass(model: Any, role: str, cfg: ProtocolConfig, cache: LogitCache, sets: dict[str, Any],
                   ids: dict[str, str], which: Sequence[str]) -> dict[str, torch.Tensor]:
    """Calibrate ``model`` (weak: on the extraction set, strong: on the alignment set; no labels)
    and return its cached K logits on the named sets (``extract``, ``align``, ``pool``, ``test``)."""
    images = {"extract": sets["extract_images"], "align": sets["extract_images"][: cfg.num_align],
              "pool": sets["pool_images"], "test": sets["test_images"]}
    calib = "extract" if role == "weak" else "align"
    cached_calibration(model, cache, ids[calib], images[calib])
    return {name: cached_logits(model, cache, ids[name], images[name], sets["k_names"], cfg.template,
                                aux_words_sha256=sets["aux_sha"]) for name in which}


def prepare(cfg: ProtocolConfig, cache: LogitCache, log: Callable[[str], None] = print) -> SharedData:
    sets, ids = make_sets(cfg)
    shared = SharedData(
        class_names=sets["class_names"], k_names=sets["k_names"], aux_sha=sets["aux_sha"], base=sets["base"],
        novel=sets["novel"], pool_images=sets["pool_images"], pool_labels=sets["pool_labels"],
        extract_images=sets["extract_images"], test_images=sets["test_images"], test_labels=sets["test_labels"],
        weak=load_zero_shot(cfg.weak, device=cfg.device), strong=load_zero_shot(cfg.strong, device=cfg.device),
    )
    for role, model, which in (("weak", shared.weak, ("extract", "pool", "test")),
                               ("strong", shared.strong, ("align", "pool", "test"))):
        started = time.perf_counter()
        for name, logits in zero_shot_pass(model, role, cfg, cache, sets, ids, which).items():
            shared.logits[f"{role}/{name}"] = logits
        shared.seconds[f"{role}_zero_shot_pass"] = time.perf_counter() - started
        log(f"  {role} zero-shot logits ({model.name}): {shared.seconds[f'{role}_zero_shot_pass']:.1f} s "
            f"(0 when cached)")
    return shared


def _hm_of_adapter(adapter, logits: torch.Tensor, labels: torch.Tensor, base, novel, c: int) -> float:
    with torch.no_grad():
        return base_novel_scores(adapter(logits)[:, :c], labels, base, novel)["hm"]


def run_seed(cfg: ProtocolConfig, shared: SharedData, seed: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """All methods for one seed: ``{"rows": {method: {base, novel, hm, seconds}}, "choices": ...}``."""
    c = len(shared.class_names)
    base, novel = shared.base, shared.novel
    train_idx, val_idx = seed_split(shared.pool_labels, base, cfg, seed)
    y_train, y_val = shared.pool_labels[train_idx], shared.pool_labels[val_idx]
    val_base_mask = torch.isin(y_val, torch.as_tensor(base))
    lg = shared.logits
    wz = {s: lg[f"weak/{s}"] for s in ("extract", "pool", "test")}
    sz = {s: lg[f"strong/{s}"] for s in ("align", "pool", "test")}
    rows: dict[str, dict[str, float]] = {}
    choices: dict[str, Any] = {}

    def score(name: str, test_logits: torch.Tensor, seconds: float) -> None:
        rows[name] = {**base_novel_scores(test_logits[:, :c], shared.test_labels, base, novel), "seconds": round(seconds, 2)}
        r = rows[name]
        log(f"  seed {seed} {name:18s} base {r['base']:.4f} novel {r['novel']:.4f} HM {r['hm']:.4f} ({seconds:.1f} s)")

    score("weak_zero_shot", wz["test"], 0.0)
    score("strong_zero_shot", sz["test"], 0.0)

    # 1. the fine-tuned weak model (the teacher): a plug-in on the weak backbone, text rows frozen
    started = time.perf_counter()
    plugin, plugin_info = make_plugin(shared.weak.backbone, cfg.plugin, seed=seed)
    weak_ft = FineTunedZeroShot(shared.weak, shared.class_names, plugin.to(cfg.device), cfg.template).to(cfg.device)
    base_val = val_idx[val_base_mask]
    weak_ft, ft_info = finetune_zero_shot(
        weak_ft, shared.pool_images[train_idx], y_train, shared.pool_images[base_val], shared.pool_labels[base_val],
        classes=base, lrs=cfg.weak_lrs, epochs=cfg.weak_epochs, seed=seed)
    ft_test = weak_ft.predict(shared.test_images)
    ft_val = weak_ft.predict(shared.pool_images[val_idx])
    weak_ft_seconds = time.perf_counter() - started
    choices["weak_fine_tuning"] = {**plugin_info, **{k: v for k, v in ft_info.items() if k != "history"}}
    score("weak_fine_tuned", ft_test, weak_ft_seconds)

    # 2. extraction (no labels): teacher = fine-tuned weak logits on the unlabeled extraction set
    started = time.perf_counter()
    teacher = weak_ft.predict(shared.extract_images)
    adapter, _ = extract_adapter(wz["extract"], teacher, config=ExtractionConfig(epochs=cfg.extraction_epochs, seed=seed))
    extract_seconds = time.perf_counter() - started
    with torch.no_grad():
        score("source_adapter", adapter(wz["test"]), extract_seconds)

    # 3. transfer, no backpropagation; lambda per image chosen by validation HM
    started = time.perf_counter()
    n_align = sz["align"].shape[0]
    lam_scores = {}
    for lam in cfg.lambdas:
        moved = transfer_adapter(adapter, wz["extract"][:n_align], sz["align"], lam)
        lam_scores[lam] = _hm_of_adapter(moved, sz["pool"][val_idx], y_val, base, novel, c)
    lam = max(lam_scores, key=lambda v: (lam_scores[v], v))
    transferred = transfer_adapter(adapter, wz["extract"][:n_align], sz["align"], lam)
    transfer_seconds = time.perf_counter() - started
    choices["lambda_per_image"] = {"chosen": lam, "val_hm": lam_scores}
    with torch.no_grad():
        score("transferred", transferred(sz["test"]), extract_seconds + transfer_seconds)

    # 4. TransMiter+: refine on the base-class shots of the strong model's cached logits
    started = time.perf_counter()
    best = (_hm_of_adapter(transferred, sz["pool"][val_idx], y_val, base, novel, c), None, 0, transferred)
    for lr in cfg.refine_lrs:
        for epochs in cfg.refine_epochs:
            refined, _ = refine_adapter(transferred, sz["pool"][train_idx], y_train, sz["pool"][base_val],
                                        shared.pool_labels[base_val], classes=base,
                                        config=RefineConfig(epochs=epochs, lr=lr, batch_size=32, seed=seed))
            hm = _hm_of_adapter(refined, sz["pool"][val_idx], y_val, base, novel, c)
            if hm > best[0]:
                best = (hm, lr, epochs, refined)
    refine_seconds = time.perf_counter() - started
    choices["refine"] = {"lr": best[1], "epochs": best[2], "val_hm": best[0]}
    with torch.no_grad():
        score("transmiter_plus", best[3](sz["test"]), extract_seconds + transfer_seconds + refine_seconds)

    # 5. logit arithmetic (reference baselines), alpha by validation HM
    for name, fn in (("proxy", lambda a, s, f, w: proxy_logits(s, f, w, a)),
                     ("ensemble", lambda a, s, f, w: ensemble_logits(f, s, a))):
        started = time.perf_counter()
        alpha, alpha_scores = choose_alpha(lambda a: fn(a, sz["pool"][val_idx][:, :c], ft_val, wz["pool"][val_idx][:, :c]),
                                           y_val, base, novel)
        choices[f"{name}_alpha"] = {"chosen": alpha, "val_hm": alpha_scores}
        score(name, fn(alpha, sz["test"][:, :c], ft_test, wz["test"][:, :c]), time.perf_counter() - started)

    # 6. the costly upper reference: the strong model fine-tuned the same way
    if cfg.strong_ft:
        started = time.perf_counter()
        splugin, splugin_info = make_plugin(shared.strong.backbone, DEFAULT_MODULE_KIND, seed=seed)
        strong_ft = FineTunedZeroShot(shared.strong, shared.class_names, splugin.to(cfg.device), cfg.template).to(cfg.device)
        strong_ft, sft_info = finetune_zero_shot(
            strong_ft, shared.pool_images[train_idx], y_train, shared.pool_images[base_val], shared.pool_labels[base_val],
            classes=base, lrs=cfg.strong_lrs, epochs=cfg.strong_epochs, seed=seed)
        train_seconds = time.perf_counter() - started
        score("strong_fine_tuned", strong_ft.predict(shared.test_images), time.perf_counter() - started)
        rows["strong_fine_tuned"]["train_seconds"] = round(train_seconds, 2)
        choices["strong_fine_tuning"] = {**splugin_info, **{k: v for k, v in sft_info.items() if k != "history"}}
    return {"seed": seed, "rows": rows, "choices": choices,
            "counts": {"train": len(train_idx), "val": len(val_idx)},
            "seconds": {"weak_fine_tuning": weak_ft_seconds, "extraction": extract_seconds,
                        "transfer": transfer_seconds, "refine": refine_seconds}}


def summarise(per_seed: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and std over seeds of base, novel, HM and seconds per method."""
    out: dict[str, dict[str, float]] = {}
    for method in METHODS:
        runs = [r["rows"][method] for r in per_seed if method in r["rows"]]
        if not runs:
            continue
        row: dict[str, float] = {"seeds": len(runs)}
        for key in ("base", "novel", "hm", "seconds"):
            values = np.array([r[key] for r in runs], dtype=float)
            row[key] = float(values.mean())
            row[f"{key}_std"] = float(values.std())
        out[method] = row
    return out


LABELS = {
    "weak_zero_shot": "weak zero-shot", "weak_fine_tuned": "weak fine-tuned (teacher)",
    "strong_zero_shot": "strong zero-shot", "source_adapter": "weak + extracted adapter",
    "transferred": "TransMiter transferred (no backprop)", "transmiter_plus": "TransMiter+ (16-shot base labels)",
    "proxy": "proxy (logit arithmetic)", "ensemble": "ensemble (logit arithmetic)",
    "strong_fine_tuned": "strong fine-tuned (upper reference)",
}


def format_table(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| method | base | novel | HM | seconds beyond the logit cache |", "| --- | ---: | ---: | ---: | ---: |"]
    for method, row in summary.items():
        pm = lambda k: f"{100 * row[k]:.1f} ± {100 * row[k + '_std']:.1f}" if row["seeds"] > 1 else f"{100 * row[k]:.1f}"  # noqa: E731
        lines.append(f"| {LABELS.get(method, method)} | {pm('base')} | {pm('novel')} | {pm('hm')} | {row['seconds']:.1f} |")
    return "\n".join(lines)


def run_protocol(cfg: ProtocolConfig, cache_dir: str | Path, seeds: Sequence[int] = (0,),
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Prepare the shared logits once, run every seed, return the per-seed runs and the summary."""
    cache = LogitCache(cache_dir)
    started = time.perf_counter()
    shared = prepare(cfg, cache, log)
    per_seed = [run_seed(cfg, shared, seed, log) for seed in seeds]
    summary = summarise(per_seed)
    ratio = None
    if "strong_fine_tuned" in summary:
        ratio = summary["transferred"]["seconds"] / max(summary["strong_fine_tuned"]["seconds"], 1e-9)
    return {
        "config": cfg.to_dict(), "seeds": list(seeds), "per_seed": per_seed, "summary": summary,
        "split": {"base": [shared.class_names[i] for i in shared.base], "novel": [shared.class_names[i] for i in shared.novel]},
        "models": {"weak": shared.weak.name, "strong": shared.strong.name},
        "counts": {"labelled_pool": len(shared.pool_labels), "train_shots_per_base_class": cfg.shots,
                   "val_per_class": cfg.val_per_class, "unlabeled_extraction": len(shared.extract_images),
                   "unlabeled_alignment": cfg.num_align, "test": len(shared.test_labels), "K": cfg.K},
        "shared_seconds": shared.seconds, "transfer_over_strong_ft_ratio": ratio,
        "seconds": time.perf_counter() - started,
    }


__all__ = ["FMNIST_BASE", "METHODS", "ProtocolConfig", "format_table", "load_zero_shot", "make_sets", "prepare", "seed_split", "zero_shot_pass", "run_protocol",
           "run_seed", "summarise"]

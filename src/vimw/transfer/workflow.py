"""The steps on files: what ``vimw transfer extract | apply | refine | evaluate`` runs.

Each step reads the previous step's adapter manifest (the data settings, the training seed,
the models, the logit cache), so the image sets and the cached zero-shot logits are the
same throughout; each returns a plain dict of what it did, for the caller to print.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from vimw.errors import DataError, FormatError
from vimw.modules.registry import DEFAULT_MODULE_KIND
from vimw.transfer.adapter import TransMiterAdapter, load_adapter, save_adapter
from vimw.transfer.cache import LogitCache
from vimw.transfer.protocol import (DEFAULT_WEAK, DataConfig, ImageSets, calibrate, load_zero_shot, make_sets, seed_split, view_names,
                                    zero_shot_logits)
from vimw.transfer.scoring import base_novel_scores, blend_logits, json_safe, select_alpha, validation_metrics
from vimw.transfer.steps import (LAMBDA_GRID, ExtractionConfig, RefineConfig, adapter_logits, apply_adapter,
                                 extract_adapter, refine_adapter, select_lambda)
from vimw.transfer.teacher import (FineTunedZeroShot, TeacherConfig, finetune_teacher, is_teacher_dir, load_teacher,
                                   make_plugin, save_teacher)

DEFAULT_CACHE = "runs/transfer-cache"
TEACHER_DIR = "teacher"


def _model_logits(spec: str, sets: ImageSets, cache: LogitCache, names: Sequence[str], device: str):
    model = load_zero_shot(spec, device=device)
    calibrate(model, sets, cache)
    return model, {n: zero_shot_logits(model, sets, cache, n) for n in names}


def _align_names(data: DataConfig) -> list[str]:
    return view_names("align", data.views) if data.num_align else []


def _alignment_rows(logits: dict[str, torch.Tensor], data: DataConfig, train_idx: torch.Tensor) -> torch.Tensor:
    parts = [logits[n][train_idx] for n in view_names("pool", data.views)]
    parts += [logits[n] for n in _align_names(data)]
    return torch.cat(parts)


def _load(directory: str | Path) -> tuple[TransMiterAdapter, dict[str, Any], dict[str, Any], DataConfig]:
    adapter, manifest = load_adapter(directory)
    settings = dict(manifest.get("settings") or {})
    if "data" not in settings or "model_spec" not in settings:
        raise FormatError(f"{directory}: the adapter manifest has no data settings (not written by `vimw transfer`)")
    try:
        data = DataConfig.from_dict(settings["data"])
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{directory}: invalid data settings in the manifest ({exc})") from None
    return adapter, manifest, settings, data


def _save(adapter: TransMiterAdapter, out: str | Path, manifest: dict[str, Any], settings: dict[str, Any],
          target: str | None) -> None:
    save_adapter(adapter, out, source_model=manifest["source_model"], target_model=target,
                 aux_words_sha256=manifest.get("aux_words_sha256"), template=manifest["template"],
                 class_names=manifest.get("class_names"), settings=json_safe(settings))


def extract_step(
    out: str | Path,
    *,
    data: DataConfig = DataConfig(),
    weak: str = DEFAULT_WEAK,
    finetuned: str = DEFAULT_MODULE_KIND,
    seed: int = 0,
    teacher: TeacherConfig = TeacherConfig(),
    extraction: ExtractionConfig = ExtractionConfig(),
    cache: str | Path = DEFAULT_CACHE,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune the weak model on the base shots (unless ``finetuned`` is a saved teacher),
    then extract an adapter from it on the unlabeled images, without labels."""
    out = Path(out)
    store = LogitCache(cache)
    sets = make_sets(data)
    unl = view_names("unlabeled", data.views)
    model, zs = _model_logits(weak, sets, store, unl, device)
    started = time.perf_counter()
    if is_teacher_dir(finetuned):
        ft, info = load_teacher(finetuned, device=device)
        if ft.class_names != sets.class_names:
            raise DataError(f"the teacher in {finetuned} was trained for classes {ft.class_names}, "
                            f"the task has {sets.class_names}")
        log(f"teacher: {finetuned}")
        teacher_info = {"source": str(Path(finetuned).resolve())}
    else:
        train_idx, val_idx = seed_split(sets, seed)
        base_val = val_idx[torch.isin(sets.pool_labels[val_idx], torch.as_tensor(sets.base))]
        plugin, plugin_info = make_plugin(model.backbone, finetuned, seed=seed)
        ft = FineTunedZeroShot(model, sets.class_names, plugin.to(device), data.template).to(device)
        log(f"fine-tuning {model.name} with {plugin_info['plugin']} on {len(train_idx)} base-class images ...")
        ft, info = finetune_teacher(ft, sets.pool_images[train_idx], sets.pool_labels[train_idx],
                                    sets.pool_images[base_val], sets.pool_labels[base_val], base=sets.base,
                                    novel=sets.novel, protocol="base", config=replace(teacher, seed=seed))
        save_teacher(out / TEACHER_DIR, ft, model_spec=weak, plugin_source=plugin_info["plugin_source"], info=info)
        log(f"  kept epoch {info['best_epoch']} (base-class validation accuracy {info['best_metrics']['score']:.4f}); "
            f"saved to {out / TEACHER_DIR}")
        teacher_info = {"source": str((out / TEACHER_DIR).resolve()), "epoch": info["best_epoch"]}
    teacher_logits = torch.cat([ft.predict(sets.images(n)) for n in unl])  # the unlabeled images: no labels
    adapter, x_info = extract_adapter(torch.cat([zs[n] for n in unl]), teacher_logits,
                                      config=replace(extraction, seed=seed))
    settings = {"data": data.to_dict(), "seed": seed, "cache": str(Path(cache).resolve()), "model_spec": weak,
                "weak_spec": weak, "teacher": teacher_info,
                "extraction": {**extraction.to_dict(), "seed": seed, "rows": len(teacher_logits),
                               "final_loss": x_info["history"][-1]["train_loss"],
                               "seconds": round(time.perf_counter() - started, 2)}}
    save_adapter(adapter, out, source_model=model.name, aux_words_sha256=sets.aux_sha, template=data.template,
                 class_names=sets.k_names, settings=json_safe(settings))
    return {"out": str(out), "model": model.name, "rows": len(teacher_logits), "K": adapter.num_logits,
            "C": adapter.num_classes}


def apply_step(
    adapter_dir: str | Path,
    to: str,
    out: str | Path,
    *,
    lambdas: Sequence[float] = LAMBDA_GRID,
    protocol: str = "all",
    cache: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Move a saved adapter to the model ``to`` without backpropagation; with several lambdas,
    the one :func:`~vimw.transfer.steps.select_lambda` prefers on validation images."""
    adapter, manifest, settings, data = _load(adapter_dir)
    store = LogitCache(cache or settings["cache"])
    sets = make_sets(data)
    names = view_names("pool", data.views) + _align_names(data)
    _, source = _model_logits(settings["model_spec"], sets, store, names, device)
    target_model, target = _model_logits(to, sets, store, names, device)
    train_idx, val_idx = seed_split(sets, settings["seed"])
    src, tgt = _alignment_rows(source, data, train_idx), _alignment_rows(target, data, train_idx)
    started = time.perf_counter()
    candidates = None
    if len(lambdas) > 1:
        lam, candidates = select_lambda(adapter, src, tgt, target["pool"][val_idx], sets.pool_labels[val_idx],
                                        base=sets.base, novel=sets.novel, protocol=protocol, grid=lambdas)
    elif len(lambdas) == 1:
        lam = float(lambdas[0])
    else:
        raise DataError("give at least one lambda")
    moved = apply_adapter(adapter, src, tgt, lam)
    settings.update({"model_spec": to, "target_model": target_model.name,
                     "apply": {"lambda_per_image": lam, "protocol": protocol, "candidates": candidates,
                               "rows": len(src), "seconds": round(time.perf_counter() - started, 2)}})
    _save(moved, out, manifest, settings, target_model.name)
    return {"out": str(out), "model": target_model.name, "lambda": lam, "candidates": candidates,
            "rows": len(src), "composed": adapter.rotation is not None}


def refine_step(
    adapter_dir: str | Path,
    out: str | Path,
    *,
    refine: RefineConfig = RefineConfig(),
    protocol: str = "all",
    cache: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """TransMiter+: refine a saved adapter on its model's logits of the base-class shots."""
    adapter, manifest, settings, data = _load(adapter_dir)
    store = LogitCache(cache or settings["cache"])
    sets = make_sets(data)
    pool_views = view_names("pool", data.views)
    _, logits = _model_logits(settings["model_spec"], sets, store, pool_views, device)
    train_idx, val_idx = seed_split(sets, settings["seed"])
    y = sets.pool_labels
    refined, info = refine_adapter(adapter, torch.cat([logits[n][train_idx] for n in pool_views]),
                                   y[train_idx].repeat(len(pool_views)), logits["pool"][val_idx], y[val_idx],
                                   base=sets.base, novel=sets.novel, protocol=protocol,
                                   config=replace(refine, seed=settings["seed"]))
    settings["refine"] = {**{k: v for k, v in info.items() if k != "config"}, "protocol": protocol,
                          "config": refine.to_dict()}
    _save(refined, out, manifest, settings, manifest.get("target_model"))
    return {"out": str(out), "lr": info["lr"], "epoch": info["epoch"], "candidates": info["candidates"]}


def evaluate_step(
    adapter_dir: str | Path,
    *,
    blend: float | None = 1.0,
    protocol: str = "all",
    cache: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Base / novel / HM on the test images: the model's zero-shot logits, the adapter, and the
    blend ``alpha`` (``blend=None``: alpha chosen on validation images under ``protocol``)."""
    adapter, manifest, settings, data = _load(adapter_dir)
    store = LogitCache(cache or settings["cache"])
    sets = make_sets(data)
    model, logits = _model_logits(settings["model_spec"], sets, store, ["pool", "test"], device)
    c = adapter.num_classes
    _, val_idx = seed_split(sets, settings["seed"])
    test, val = logits["test"], logits["pool"][val_idx]
    adapted_test, adapted_val = adapter_logits(adapter, test), adapter_logits(adapter, val)
    y_val = sets.pool_labels[val_idx]
    candidates = None
    if blend is None:
        alpha, candidates = select_alpha(lambda a: blend_logits(adapted_val, val[:, :c], a), y_val, sets.base,
                                         sets.novel, protocol=protocol)
    else:
        alpha = float(blend)
    scores = {"zero-shot": base_novel_scores(test[:, :c], sets.test_labels, sets.base, sets.novel),
              "adapter": base_novel_scores(adapted_test, sets.test_labels, sets.base, sets.novel)}
    if alpha != 1.0:
        scores[f"blend {alpha:g}"] = base_novel_scores(blend_logits(adapted_test, test[:, :c], alpha),
                                                       sets.test_labels, sets.base, sets.novel)
    return json_safe({"model": model.name, "adapter": str(adapter_dir), "transferred": adapter.rotation is not None,
            "alpha": alpha, "alpha_candidates": candidates,
            "validation": validation_metrics(blend_logits(adapted_val, val[:, :c], alpha), y_val, sets.base,
                                             sets.novel, protocol),
            "base_classes": [sets.class_names[i] for i in sets.base],
            "novel_classes": [sets.class_names[i] for i in sets.novel], "test_images": len(test), "scores": scores})


__all__ = ["DEFAULT_CACHE", "apply_step", "evaluate_step", "extract_step", "refine_step"]

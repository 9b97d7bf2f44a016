"""The steps on files: what ``vimw transfer extract | apply | refine | evaluate`` runs.

Each step reads the previous step's adapter manifest (the data settings, the training seed,
the models, the logit cache), so the image sets and the cached zero-shot logits are the
same throughout; each returns a plain dict of what it did, for the caller to print. Every
default is :class:`~vimw.transfer.settings.TransferSettings`'.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from vimw.errors import DataError, FormatError
from vimw.io.names import TEACHER_DIR
from vimw.transfer.adapter import TransMiterAdapter, load_adapter, save_adapter
from vimw.transfer.cache import LogitCache
from vimw.transfer.data import (DataConfig, ImageSets, alignment_names, alignment_rows, extraction_names, gather,
                                gather_images, make_sets, model_logits, seed_split, stack_views, view_names)
from vimw.transfer.scoring import base_novel_scores, blend_logits, json_safe, select_alpha, validation_metrics
from vimw.transfer.settings import TransferSettings
from vimw.transfer.steps import RefineConfig, adapter_logits, apply_adapter, extract_adapter, refine_adapter, select_lambda
from vimw.transfer.teacher import (FineTunedZeroShot, check_plugin_source, finetune_teacher, is_teacher_dir,
                                   load_teacher, make_plugin, save_teacher)
from vimw.zoo.recipe import write_recipe_file

_DEFAULTS = TransferSettings()


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
          target: str | None, recipe: Mapping | None) -> None:
    save_adapter(adapter, out, source_model=manifest["source_model"], target_model=target,
                 aux_words_sha256=manifest.get("aux_words_sha256"), template=manifest["template"],
                 class_names=manifest.get("class_names"), settings=json_safe(settings))
    if recipe is not None:
        write_recipe_file(out, recipe)


# -- extract --------------------------------------------------------------------------------------------
def _saved_teacher(settings: TransferSettings, sets: ImageSets, device: str,
                   log: Callable[[str], None]) -> tuple[FineTunedZeroShot, dict[str, Any]]:
    ft, _ = load_teacher(settings.finetuned, device=device)
    if ft.class_names != sets.class_names:
        raise DataError(f"the teacher in {settings.finetuned} was trained for classes {ft.class_names}, "
                        f"the task has {sets.class_names}")
    log(f"teacher: {settings.finetuned}")
    return ft, {"source": str(Path(settings.finetuned).resolve())}


def _new_teacher(settings: TransferSettings, sets: ImageSets, model: Any, out: Path, device: str,
                 log: Callable[[str], None]) -> tuple[FineTunedZeroShot, dict[str, Any]]:
    """The weak model fine-tuned on the base shots, its epoch chosen under ``teacher_protocol``;
    saved in ``out/teacher`` so a later extract can reuse it."""
    split = seed_split(sets, settings.seed)
    val = split.base_val if settings.teacher_protocol == "base" else split.val
    plugin, plugin_info = make_plugin(model.backbone, settings.finetuned, seed=settings.seed)
    ft = FineTunedZeroShot(model, sets.class_names, plugin.to(device), settings.data.template).to(device)
    log(f"fine-tuning {model.name} with {plugin_info['plugin']} on {len(split.train)} base-class images ...")
    ft, info = finetune_teacher(ft, sets.pool_images[split.train], sets.pool_labels[split.train],
                                sets.pool_images[val], sets.pool_labels[val], base=sets.base, novel=sets.novel,
                                protocol=settings.teacher_protocol, config=replace(settings.teacher, seed=settings.seed))
    save_teacher(out / TEACHER_DIR, ft, model_spec=settings.weak, plugin_source=plugin_info["plugin_source"], info=info)
    log(f"  kept epoch {info['best_epoch']} (validation score {info['best_metrics']['score']:.4f}, "
        f"{settings.teacher_protocol} classes); saved to {out / TEACHER_DIR}")
    return ft, {"source": str((out / TEACHER_DIR).resolve()), "epoch": info["best_epoch"],
                "protocol": settings.teacher_protocol}


def extract_step(out: str | Path, settings: TransferSettings = _DEFAULTS, *, device: str = "cpu",
                 log: Callable[[str], None] = print, recipe: Mapping | None = None) -> dict[str, Any]:
    """Fine-tune the weak model on the base shots (unless ``settings.finetuned`` is a saved
    teacher), then extract an adapter from it on the extraction images (the shots' images, and
    with ``extraction="unlabeled"`` the unlabeled ones), without labels.
    ``recipe`` (the effective recipe, when a command ran from one) lands as ``out/recipe.json``."""
    out, data, seed = Path(out), settings.data, settings.seed
    if not is_teacher_dir(settings.finetuned):
        check_plugin_source(settings.finetuned)  # before the passes over the images
    sets = make_sets(data)
    names = extraction_names(data)
    model, zs = model_logits(settings.weak, sets, LogitCache(settings.cache), names, device)
    started = time.perf_counter()
    if is_teacher_dir(settings.finetuned):
        ft, teacher_info = _saved_teacher(settings, sets, device, log)
    else:
        ft, teacher_info = _new_teacher(settings, sets, model, out, device, log)
    train = seed_split(sets, seed).train
    teacher_logits = torch.cat([ft.predict(x) for x in gather_images(sets, names, train)])  # no labels
    adapter, x_info = extract_adapter(gather(names, zs.__getitem__, train), teacher_logits,
                                      config=replace(settings.extraction, seed=seed))
    record = {"data": data.to_dict(), "seed": seed, "cache": str(Path(settings.cache).resolve()),
              "model_spec": settings.weak, "weak_spec": settings.weak, "teacher": teacher_info,
              "extraction": {**settings.extraction.to_dict(), "seed": seed, "rows": len(teacher_logits),
                             "final_loss": x_info["history"][-1]["train_loss"],
                             "seconds": round(time.perf_counter() - started, 2)}}
    save_adapter(adapter, out, source_model=model.name, aux_words_sha256=sets.aux_sha, template=data.template,
                 class_names=sets.k_names, settings=json_safe(record))
    if recipe is not None:
        write_recipe_file(out, recipe)
    return {"out": str(out), "model": model.name, "rows": len(teacher_logits), "K": adapter.num_logits,
            "C": adapter.num_classes}


# -- apply, refine, evaluate ------------------------------------------------------------------------------
def apply_step(
    adapter_dir: str | Path,
    to: str,
    out: str | Path,
    *,
    lambdas: Sequence[float] = _DEFAULTS.lambdas,
    protocol: str = _DEFAULTS.protocol,
    cache: str | Path | None = None,
    device: str = "cpu",
    recipe: Mapping | None = None,
) -> dict[str, Any]:
    """Move a saved adapter to the model ``to`` without backpropagation; with several lambdas,
    the one :func:`~vimw.transfer.steps.select_lambda` prefers on validation images."""
    if not lambdas:
        raise DataError("give at least one lambda")
    adapter, manifest, settings, data = _load(adapter_dir)
    store = LogitCache(cache or settings["cache"])
    sets = make_sets(data)
    names = alignment_names(data)  # the shots' views first: "pool" itself holds the validation images
    _, source = model_logits(settings["model_spec"], sets, store, names, device)
    target_model, target = model_logits(to, sets, store, names, device)
    split = seed_split(sets, settings["seed"])
    src, tgt = alignment_rows(source, data, split.train), alignment_rows(target, data, split.train)
    started = time.perf_counter()
    lam, candidates = float(lambdas[0]), None
    if len(lambdas) > 1:
        lam, candidates = select_lambda(adapter, src, tgt, target["pool"][split.val], sets.pool_labels[split.val],
                                        base=sets.base, novel=sets.novel, protocol=protocol, grid=lambdas)
    moved = apply_adapter(adapter, src, tgt, lam)
    settings.update({"model_spec": to, "target_model": target_model.name,
                     "apply": {"lambda_per_image": lam, "protocol": protocol, "candidates": candidates,
                               "rows": len(src), "seconds": round(time.perf_counter() - started, 2)}})
    _save(moved, out, manifest, settings, target_model.name, recipe)
    return {"out": str(out), "model": target_model.name, "lambda": lam, "candidates": candidates,
            "rows": len(src), "composed": adapter.rotation is not None}


def refine_step(
    adapter_dir: str | Path,
    out: str | Path,
    *,
    refine: RefineConfig = _DEFAULTS.refine,
    protocol: str = _DEFAULTS.protocol,
    cache: str | Path | None = None,
    device: str = "cpu",
    recipe: Mapping | None = None,
) -> dict[str, Any]:
    """TransMiter+: refine a saved adapter on its model's logits of the base-class shots,
    pulled toward the adapter it starts from on the alignment images (``refine.distill``)."""
    adapter, manifest, settings, data = _load(adapter_dir)
    sets = make_sets(data)
    pool_views = view_names("pool", data.views)
    names = list(dict.fromkeys(pool_views + alignment_names(data)))
    _, logits = model_logits(settings["model_spec"], sets, LogitCache(cache or settings["cache"]), names, device)
    split, y = seed_split(sets, settings["seed"]), sets.pool_labels
    refined, info = refine_adapter(adapter, stack_views(logits, pool_views, split.train),
                                   y[split.train].repeat(len(pool_views)), logits["pool"][split.val], y[split.val],
                                   base=sets.base, novel=sets.novel, protocol=protocol,
                                   config=replace(refine, seed=settings["seed"]),
                                   distill_logits=alignment_rows(logits, data, split.train))
    settings["refine"] = {**{k: v for k, v in info.items() if k != "config"}, "protocol": protocol,
                          "config": refine.to_dict()}
    _save(refined, out, manifest, settings, manifest.get("target_model"), recipe)
    return {"out": str(out), "lr": info["lr"], "epoch": info["epoch"], "candidates": info["candidates"]}


def evaluate_step(
    adapter_dir: str | Path,
    *,
    blend: float | None = _DEFAULTS.blend,
    protocol: str = _DEFAULTS.protocol,
    cache: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Base / novel / HM on the test images: the model's zero-shot logits, the adapter, and the
    blend ``alpha`` (``blend=None``: alpha chosen on validation images under ``protocol``)."""
    adapter, manifest, settings, data = _load(adapter_dir)
    sets = make_sets(data)
    store = LogitCache(cache or settings["cache"])
    model, logits = model_logits(settings["model_spec"], sets, store, ["pool", "test"], device)
    c, val_idx = adapter.num_classes, seed_split(sets, settings["seed"]).val
    test, val, y_val = logits["test"], logits["pool"][val_idx], sets.pool_labels[val_idx]
    adapted_test, adapted_val = adapter_logits(adapter, test), adapter_logits(adapter, val)
    alpha, candidates = (1.0 if blend is None else float(blend)), None
    if blend is None:
        alpha, candidates = select_alpha(lambda a: blend_logits(adapted_val, val[:, :c], a), y_val, sets.base,
                                         sets.novel, protocol=protocol)

    def scores(logits: torch.Tensor) -> dict[str, float]:
        return base_novel_scores(logits, sets.test_labels, sets.base, sets.novel)

    table = {"zero-shot": scores(test[:, :c]), "adapter": scores(adapted_test)}
    if alpha != 1.0:
        table[f"blend {alpha:g}"] = scores(blend_logits(adapted_test, test[:, :c], alpha))
    validation = validation_metrics(blend_logits(adapted_val, val[:, :c], alpha), y_val, sets.base, sets.novel, protocol)
    return json_safe({"model": model.name, "adapter": str(adapter_dir), "transferred": adapter.rotation is not None,
                      "alpha": alpha, "alpha_candidates": candidates, "validation": validation,
                      "base_classes": sets.split_names()["base"], "novel_classes": sets.split_names()["novel"],
                      "test_images": len(test), "scores": table})


__all__ = ["apply_step", "evaluate_step", "extract_step", "refine_step"]

"""Build any HF vision transformer (CLIP, ViT, DINOv2, SigLIP) by name, directory or config.

The family follows the checkpoint's ``model_type``; CLIP goes to ``hf_clip`` (its backbone
keeps the visual projection), the others are an ``hf_base.HFVisionBackbone`` over the HF
model's vision tower. Preprocessing comes from the checkpoint's image processor file when
there is one, else from the family's defaults and the config's image size. Nothing is
downloaded implicitly: with ``HF_HUB_OFFLINE=1`` only local files are read. transformers is
optional (the ``clip`` extra) and imported only when a model is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from vimw._extras import quiet_loading, require
from vimw.backbones.hf_base import (
    FAMILIES,
    Family,
    HFVisionBackbone,
    arch_name,
    family_for_model_type,
    offline_mode,
    preprocess_from,
    read_processor_config,
    resolve_source,
    seeded,
)
from vimw.backbones.hf_clip import create_hf_clip_backbone, save_tiny_clip
from vimw.errors import VimwError
from vimw.io.names import HF_PREPROCESSOR_FILE as PREPROCESSOR_FILE


def _transformers() -> ModuleType:
    return require("transformers", "clip", "HF vision backbones (CLIP, ViT, DINOv2, SigLIP)")


# -- loading ----------------------------------------------------------------------------
def create_hf_backbone(name_or_path: str, image_size: int | None = None, config: Any | None = None) -> HFVisionBackbone:
    """Build an HF vision backbone from a local directory, a hub name, or a config.

    The family (CLIP, ViT, DINOv2, SigLIP) follows the checkpoint's ``model_type``.
    With ``config`` (a transformers config of one of the families) the model is randomly
    initialised and ``name_or_path`` is only its name.
    """
    transformers = _transformers()
    if config is not None:
        family = family_for_model_type(getattr(config, "model_type", None))
        if family.name == "clip":
            return create_hf_clip_backbone(name_or_path, image_size=image_size, config=config)
        config = _vision_config(transformers, family, config.to_dict())
        model = _build(transformers, family, config)
        arch, processor, source = "hf:" + (name_or_path or "random"), None, None
    else:
        source = resolve_source(name_or_path)
        offline = offline_mode() or os.path.isdir(source)
        raw = _config_dict(transformers, source, name_or_path, offline)
        family = family_for_model_type(raw.get("model_type"))
        if family.name == "clip":
            return create_hf_clip_backbone(name_or_path, image_size=image_size)
        model = _load_pretrained(transformers, family, source, name_or_path, raw, offline)
        arch, processor = arch_name(name_or_path, source), read_processor_config(source)
    model = model.float().eval()
    preprocess = preprocess_from(processor, int(model.config.image_size), family.mean, family.std)
    if image_size is not None:
        preprocess = preprocess.with_size(image_size)
    backbone = HFVisionBackbone(arch, family, getattr(model, "vision_model", model), preprocess)
    # ``arch`` is a display name; ``source`` is what rebuilds the backbone.
    backbone.source = arch if source is None else "hf:" + source
    return backbone


def backbone_from_config(arch: str, recorded: dict) -> HFVisionBackbone:
    """An untrained, frozen backbone of a recorded architecture (``{"vision_config", "family",
    "has_projection"}``, as folded exports record it); its weights are loaded afterwards."""
    transformers = _transformers()
    vision = dict(recorded.get("vision_config") or {})
    family = FAMILIES.get(str(recorded.get("family") or "clip"))
    if family is None:
        raise VimwError(f"unknown HF family {recorded.get('family')!r}; expected one of {', '.join(FAMILIES)}")
    name = arch.removeprefix("hf:")
    if family.name == "clip":
        backbone = create_hf_clip_backbone(name, config=transformers.CLIPVisionConfig(**vision))
        if not recorded.get("has_projection"):
            backbone.visual_projection = None
            backbone.embed_dim = None
    else:
        vision["model_type"] = family.model_types[0]
        backbone = create_hf_backbone(name, config=_vision_config(transformers, family, vision))
    backbone.arch = arch
    return backbone.freeze()


def _vision_config(transformers: ModuleType, family: Family, raw: dict) -> Any:
    if raw.get("model_type") in family.full_model_types and "vision_config" in raw:
        raw = dict(raw["vision_config"] or {})
    raw = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version", "architectures")}
    return getattr(transformers, family.config_class)(**raw)


def _build(transformers: ModuleType, family: Family, config: Any, **kwargs: Any) -> nn.Module:
    cls = getattr(transformers, family.model_class)
    if family.name == "vit":
        kwargs.setdefault("add_pooling_layer", False)  # vimw pools the class token itself
    return cls(config, **kwargs)


def _config_dict(transformers: ModuleType, source: str, name: str, offline: bool) -> dict:
    try:
        raw, _ = transformers.PretrainedConfig.get_config_dict(source, local_files_only=offline)
    except Exception as exc:  # transformers raises OSError, ValueError, EnvironmentError...
        raise _not_local(name, exc) from exc
    if not raw.get("model_type"):
        raise _not_local(name, FileNotFoundError(f"{source} has no config.json naming a model_type"))
    return raw


def _not_local(name: str, exc: Exception) -> VimwError:
    cause = " ".join(str(exc).split()) or type(exc).__name__
    return VimwError(
        f"could not load the HF vision model {name!r}: its weights must be present locally "
        "(a directory written by save_pretrained, or the Hugging Face cache); vimw does not "
        f"download them here. Cause: {cause}"
    )


def _load_pretrained(
    transformers: ModuleType, family: Family, source: str, name: str, raw: dict, offline: bool
) -> nn.Module:
    cls = getattr(transformers, family.model_class)
    kwargs = {"add_pooling_layer": False} if family.name == "vit" else {}
    try:
        config = _vision_config(transformers, family, raw)
        with quiet_loading(transformers):
            model, info = cls.from_pretrained(
                source, config=config, local_files_only=offline, output_loading_info=True, **kwargs
            )
    except Exception as exc:
        raise _not_local(name, exc) from exc
    missing = sorted(info.get("missing_keys") or ())
    mismatched = list(info.get("mismatched_keys") or ())
    if missing or mismatched:
        shown = missing[:5] + [str(m) for m in mismatched[:5]]
        raise VimwError(
            f"HF model {name!r} does not hold a complete {family.name} vision tower (missing or mismatched: {shown})"
        )
    return model


# -- tiny random models for tests -------------------------------------------------------
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "vit": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "image_size": 32, "patch_size": 8},
    "dinov2": {"hidden_size": 32, "mlp_ratio": 2, "num_hidden_layers": 2, "num_attention_heads": 4,
               "image_size": 32, "patch_size": 8, "layerscale_value": 0.5},
    "siglip": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "image_size": 32, "patch_size": 8},
}


def save_tiny_hf(
    family: str, directory: str | os.PathLike, *, seed: int = 0, write_preprocessor: bool = True, **overrides: Any
) -> Path:
    """Save a randomly initialised tiny ViT / DINOv2 / SigLIP vision model (safetensors) for tests.

    ``family`` is ``vit``, ``dinov2``, ``siglip`` or ``clip`` (``save_tiny_clip``).
    ``overrides`` replace fields of the tiny config. Returns the directory, loadable with
    ``create_backbone("hf:" + str(directory))``.
    """
    if family == "clip":
        return save_tiny_clip(directory, seed=seed, write_preprocessor=write_preprocessor, **overrides)
    if family not in TINY_CONFIGS:
        raise VimwError(f"unknown HF family {family!r}; expected one of clip, {', '.join(TINY_CONFIGS)}")
    transformers = _transformers()
    spec = FAMILIES[family]
    config = getattr(transformers, spec.config_class)(**{**TINY_CONFIGS[family], **overrides})
    with seeded(seed):
        model = getattr(transformers, spec.model_class)(config)
        if spec.layer_scale:  # random layer scales, so that a wrong scale cannot pass unnoticed
            for name, param in model.named_parameters():
                if name.endswith("lambda1"):
                    param.data.uniform_(0.2, 1.5)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if write_preprocessor:
        size = int(config.image_size)
        processor = {"size": {"height": size, "width": size}, "do_center_crop": False,
                     "image_mean": list(spec.mean), "image_std": list(spec.std)}
        from vimw.io import write_json

        write_json(directory / PREPROCESSOR_FILE, processor)
    return directory


__all__ = ["TINY_CONFIGS", "backbone_from_config", "create_hf_backbone", "save_tiny_hf"]

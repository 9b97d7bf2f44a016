"""CLIP ViT image encoders from HF transformers, with ViM's two sites per block (Feng et al. 2023).

The HF model only supplies the weights: the encoder loop is re-implemented here so a
plug-in module can sit parallel to each sublayer::

    h1 = LN1(x);  x = x + Attn(h1) + M_att(h1)
    h2 = LN2(x);  x = x + MLP(h2)  + M_mlp(h2)

``inner``-tap modules read the input of ``out_proj`` (the merged heads) resp. of ``fc2``
and add to that projection's output. Nothing is ever downloaded implicitly: with
``HF_HUB_OFFLINE=1`` only local files are read, and any load failure says which name
failed and that the weights must be present locally.

transformers is optional (the ``clip`` extra) and imported only when a model is built.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from vimw._extras import quiet_loading, require
from vimw.backbones.base import Preprocess
from vimw.backbones.hf_base import (  # the shared loop and loading helpers of every HF family
    CLIP_MEAN,  # OpenAI CLIP's normalisation, used when a checkpoint ships no preprocessor config
    CLIP_STD,
    FAMILIES,
    HFVisionBackbone,
    arch_name,
    offline_mode,
    preprocess_from,
    read_processor_config,
    resolve_source,
    seeded,
)
from vimw.errors import VimwError
from vimw.io.names import HF_PREPROCESSOR_FILE as PREPROCESSOR_FILE

# The tiny architecture the tests (and quick experiments) use: a few kB of weights.
TINY_CONFIG: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    projection_dim=16,
)


def _transformers() -> ModuleType:
    return require("transformers", "clip", "The CLIP backbone")


# -- the backbone ----------------------------------------------------------------------
class HFCLIPVisionBackbone(HFVisionBackbone):
    """A CLIP vision tower (ViT) with sites ``layer{i:02d}_attn`` and ``layer{i:02d}_mlp``.

    ``tower`` is the HF module holding ``embeddings``, ``pre_layrnorm``, ``encoder`` and
    ``post_layernorm``; ``visual_projection`` maps pooled features into CLIP's joint
    image-text space (``None`` for checkpoints saved without it). The encoder loop is the
    one shared by every HF family (``hf_base``).
    """

    def __init__(
        self,
        arch: str,
        tower: nn.Module,
        visual_projection: nn.Linear | None,
        preprocess: Preprocess,
    ) -> None:
        super().__init__(arch, FAMILIES["clip"], tower, preprocess)
        self.visual_projection = visual_projection
        self.embed_dim = visual_projection.out_features if visual_projection is not None else None

    @property
    def has_projection(self) -> bool:
        return self.visual_projection is not None

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        raise VimwError(
            f"backbone {self.arch} has no classifier head; use image_embeds() with text embeddings "
            "for zero-shot classification, or train a head on its pooled features"
        )

    def image_embeds(self, pooled: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings (unnormalised) of pooled features, for zero-shot use."""
        if self.visual_projection is None:
            raise VimwError(f"backbone {self.arch} was saved without CLIP's visual projection")
        return self.visual_projection(pooled)

    def weights_key(self) -> str:
        config = self.tower.config
        return (
            f"hf_clip_vision:L{self.num_blocks}:D{self.feature_dim}:F{config.intermediate_size}"
            f":H{self.num_heads}:P{self.patch_size}:S{self.native_size}:E{self.embed_dim}:{config.hidden_act}"
        )

    def describe(self) -> dict:
        return {**super().describe(), "embed_dim": self.embed_dim}


# -- loading ----------------------------------------------------------------------------
def create_hf_clip_backbone(
    name_or_path: str,
    image_size: int | None = None,
    config: Any | None = None,
) -> HFCLIPVisionBackbone:
    """Build a CLIP vision backbone from a local directory, a hub name, or a config.

    ``name_or_path`` is a directory written by ``save_pretrained`` (a full ``CLIPModel``
    or a vision tower) or a hub name such as ``openai/clip-vit-base-patch16`` that is
    already in the local HF cache when ``HF_HUB_OFFLINE=1``. With ``config`` (a
    ``CLIPVisionConfig`` or ``CLIPConfig``) the model is randomly initialised instead
    and ``name_or_path`` is only its name.
    """
    transformers = _transformers()
    if config is not None:
        model = transformers.CLIPVisionModelWithProjection(_vision_config(transformers, config))
        arch, processor = "hf:" + (name_or_path or "random"), None
    else:
        source = resolve_source(name_or_path, "CLIP")
        model = _load_pretrained(transformers, source, name_or_path)
        arch, processor = arch_name(name_or_path, source), read_processor_config(source)
    model = model.float().eval()
    preprocess = _preprocess(processor, int(model.config.image_size))
    if image_size is not None:
        preprocess = preprocess.with_size(image_size)
    backbone = HFCLIPVisionBackbone(arch, model.vision_model, getattr(model, "visual_projection", None), preprocess)
    # ``arch`` is a display name (a directory's base name); ``source`` is what rebuilds
    # the backbone: the absolute directory or the hub id (``create_backbone(source)``).
    backbone.source = arch if config is not None else "hf:" + source
    return backbone


def _vision_config(transformers: ModuleType, config: Any) -> Any:
    if isinstance(config, transformers.CLIPConfig):
        vision = transformers.CLIPVisionConfig(**config.vision_config.to_dict())
        vision.projection_dim = config.projection_dim
        return vision
    if not isinstance(config, transformers.CLIPVisionConfig):
        raise VimwError(f"config must be a transformers CLIPVisionConfig or CLIPConfig, got {type(config).__name__}")
    return config


def _load_pretrained(transformers: ModuleType, source: str, name: str) -> nn.Module:
    offline = offline_mode() or os.path.isdir(source)
    try:
        config = _load_vision_config(transformers, source, offline)
        with quiet_loading(transformers):
            model, info = transformers.CLIPVisionModelWithProjection.from_pretrained(
                source, config=config, local_files_only=offline, output_loading_info=True
            )
    except Exception as exc:  # transformers raises OSError, ValueError, EnvironmentError...
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise VimwError(
            f"could not load the CLIP vision model {name!r}: its weights must be present locally "
            "(a directory written by save_pretrained, or the Hugging Face cache); vimw does not "
            f"download them here. Cause: {cause}"
        ) from exc
    return _check_loaded(model, info, name)


def _load_vision_config(transformers: ModuleType, source: str, offline: bool) -> Any:
    """The vision config; a full CLIP checkpoint's projection size lives at its top level."""
    raw, _ = transformers.PretrainedConfig.get_config_dict(source, local_files_only=offline)
    if raw.get("model_type") == "clip":
        return _vision_config(transformers, transformers.CLIPConfig.from_dict(raw))
    return transformers.CLIPVisionConfig.from_pretrained(source, local_files_only=offline)


def _check_loaded(model: nn.Module, info: dict, name: str) -> nn.Module:
    """Refuse randomly initialised weights; a tower saved without projection just has none."""
    missing = set(info.get("missing_keys") or ())
    mismatched = list(info.get("mismatched_keys") or ())
    if "visual_projection.weight" in missing:
        missing.discard("visual_projection.weight")
        model.visual_projection = None
    if missing or mismatched:
        shown = sorted(missing)[:5] + [str(m) for m in mismatched[:5]]
        raise VimwError(f"CLIP model {name!r} does not hold a complete vision tower (missing or mismatched: {shown})")
    return model


def _preprocess(processor: dict | None, image_size: int) -> Preprocess:
    """Preprocess from a CLIPImageProcessor config (mean, std, crop size) or CLIP's defaults."""
    return preprocess_from(processor, image_size, CLIP_MEAN, CLIP_STD)


# -- a tiny random model for tests ------------------------------------------------------
def save_tiny_clip(
    directory: str | os.PathLike,
    *,
    seed: int = 0,
    with_projection: bool = True,
    write_preprocessor: bool = True,
    **overrides: Any,
) -> Path:
    """Save a randomly initialised tiny CLIP vision tower (safetensors) for tests.

    ``overrides`` replace fields of ``TINY_CONFIG``. Returns the directory, loadable
    with ``create_backbone("hf:" + str(directory))``.
    """
    transformers = _transformers()
    config = transformers.CLIPVisionConfig(**{**TINY_CONFIG, **overrides})
    cls = transformers.CLIPVisionModelWithProjection if with_projection else transformers.CLIPVisionModel
    with seeded(seed):
        model = cls(config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if write_preprocessor:
        size = int(config.image_size)
        processor = {
            "image_processor_type": "CLIPImageProcessor",
            "crop_size": {"height": size, "width": size},
            "size": {"shortest_edge": size},
            "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD),
        }
        (directory / PREPROCESSOR_FILE).write_text(json.dumps(processor, indent=2), encoding="utf-8")
    return directory


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "HFCLIPVisionBackbone",
    "TINY_CONFIG",
    "create_hf_clip_backbone",
    "save_tiny_clip",
]

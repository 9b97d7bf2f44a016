"""CLIP ViT image encoders from HF transformers, with ViM's two sites per block (SPEC 1.1).

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
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import torch
from torch import nn

from vimw._extras import require
from vimw.backbones.base import Backbone, Bypass, Preprocess, Site, hash_state_dict
from vimw.errors import VimwError
from vimw.io.names import HF_PREPROCESSOR_FILE as PREPROCESSOR_FILE

# OpenAI CLIP's normalisation, used when a checkpoint ships no preprocessor config.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

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
class HFCLIPVisionBackbone(Backbone):
    """A CLIP vision tower (ViT) with sites ``layer{i:02d}_attn`` and ``layer{i:02d}_mlp``.

    ``tower`` is the HF module holding ``embeddings``, ``pre_layrnorm``, ``encoder`` and
    ``post_layernorm``; ``visual_projection`` maps pooled features into CLIP's joint
    image-text space (``None`` for checkpoints saved without it).
    """

    def __init__(
        self,
        arch: str,
        tower: nn.Module,
        visual_projection: nn.Linear | None,
        preprocess: Preprocess,
    ) -> None:
        super().__init__()
        config = tower.config
        self.arch = arch
        self.tower = tower
        self.visual_projection = visual_projection
        self.preprocess = preprocess
        self.native_size = int(config.image_size)
        self.patch_size = int(config.patch_size)
        self.num_heads = int(config.num_attention_heads)
        self.attention_dropout = float(getattr(config, "attention_dropout", 0.0) or 0.0)
        self.feature_dim = int(config.hidden_size)
        self.embed_dim = visual_projection.out_features if visual_projection is not None else None
        self.num_blocks = int(config.num_hidden_layers)
        self.sites = _clip_sites(self.num_blocks, self.feature_dim, int(config.intermediate_size))
        self.class_names = None
        if preprocess.size < self.patch_size:
            raise VimwError(f"{arch}: image size {preprocess.size} is smaller than one patch ({self.patch_size} px)")

    @property
    def has_projection(self) -> bool:
        return self.visual_projection is not None

    # -- the contract ----------------------------------------------------------------
    def stem(self, pixels: torch.Tensor) -> torch.Tensor:
        # Other resolutions than the checkpoint's interpolate the position embeddings.
        resize = tuple(pixels.shape[-2:]) != (self.native_size, self.native_size)
        hidden = self.tower.embeddings(pixels, interpolate_pos_encoding=resize)
        return self.tower.pre_layrnorm(hidden)

    def run_block(self, index: int, hidden: torch.Tensor, bypass: Bypass | None) -> torch.Tensor:
        layer = self.tower.encoder.layers[index]
        attn_site, mlp_site = self.sites[2 * index], self.sites[2 * index + 1]
        hidden = hidden + self._attention(layer, layer.layer_norm1(hidden), _module(bypass, attn_site))
        return hidden + self._mlp(layer, layer.layer_norm2(hidden), _module(bypass, mlp_site))

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.tower.post_layernorm(hidden[:, 0])

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

    def fingerprint(self) -> str:
        # Hash a location-free architecture key, not ``arch``: the same weights loaded by
        # hub name or from a directory anywhere on disk must give the same fingerprint.
        if self._fingerprint is None:
            self._fingerprint = hash_state_dict(self.weights_key(), self.state_dict())
        return self._fingerprint

    def weights_key(self) -> str:
        config = self.tower.config
        return (
            f"hf_clip_vision:L{self.num_blocks}:D{self.feature_dim}:F{config.intermediate_size}"
            f":H{self.num_heads}:P{self.patch_size}:S{self.native_size}:E{self.embed_dim}:{config.hidden_act}"
        )

    def describe(self) -> dict:
        return {**super().describe(), "embed_dim": self.embed_dim, "patch_size": self.patch_size}

    # -- sublayers with their bypass ------------------------------------------------------
    def _attention(self, layer: nn.Module, h: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
        attn = layer.self_attn
        batch, length, channels = h.shape
        q, k, v = (_split_heads(proj(h), self.num_heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        dropout = self.attention_dropout if self.training else 0.0
        # SDPA's default scale is head_dim ** -0.5, the same as CLIP's.
        merged = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        merged = merged.transpose(1, 2).reshape(batch, length, channels)
        return _project(attn.out_proj, h, merged, module)

    def _mlp(self, layer: nn.Module, h: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
        mlp = layer.mlp
        return _project(mlp.fc2, h, mlp.activation_fn(mlp.fc1(h)), module)


def _split_heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``N x L x C`` -> ``N x heads x L x C/heads``."""
    return t.view(t.shape[0], t.shape[1], num_heads, -1).transpose(1, 2)


def _module(bypass: Bypass | None, site: Site) -> nn.Module | None:
    return bypass.get(site.name) if bypass else None


def _project(proj: nn.Linear, h: torch.Tensor, z: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
    """Sublayer output ``proj(z)`` plus the module's contribution at its tap."""
    out = proj(z)
    if module is None:
        return out
    tap = getattr(module, "tap", "input")
    if tap == "inner":
        return out + module(z)
    if tap == "input":
        return out + module(h)
    raise VimwError(f"unknown module tap {tap!r}; expected 'input' or 'inner'")


def _clip_sites(num_layers: int, hidden: int, intermediate: int) -> tuple[Site, ...]:
    sites = []
    for i in range(num_layers):
        sites.append(Site(f"layer{i:02d}_attn", i, hidden, hidden, 1, "nlc_cls", hidden, "attn"))
        sites.append(Site(f"layer{i:02d}_mlp", i, hidden, hidden, 1, "nlc_cls", intermediate, "mlp"))
    return tuple(sites)


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
        source = _resolve_source(name_or_path)
        model = _load_pretrained(transformers, source, name_or_path)
        arch, processor = _arch_name(name_or_path, source), _read_processor_config(source)
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


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else with separators is a path.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or os.path.isabs(name)


def _resolve_source(name_or_path: str) -> str:
    """The absolute directory for local models, or the hub id unchanged."""
    if not name_or_path or not name_or_path.strip():
        raise VimwError("an HF CLIP backbone needs a model name or directory, e.g. 'hf:openai/clip-vit-base-patch16'")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise VimwError(f"CLIP model path {name_or_path!r} is a file; expected a directory written by save_pretrained")
    if _looks_like_path(name_or_path):
        raise VimwError(f"CLIP model directory {name_or_path!r} does not exist")
    return name_or_path


def _load_pretrained(transformers: ModuleType, source: str, name: str) -> nn.Module:
    offline = _offline() or os.path.isdir(source)
    try:
        config = _load_vision_config(transformers, source, offline)
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


def _arch_name(name_or_path: str, source: str) -> str:
    # A directory's absolute path changes when it moves; its name is what a user
    # recognises. The fingerprint does not depend on it (see ``weights_key``).
    return "hf:" + (Path(source).name if os.path.isdir(source) else name_or_path)


# -- preprocessing ----------------------------------------------------------------------
def _read_processor_config(source: str) -> dict | None:
    """The checkpoint's image processor settings, if any are available locally."""
    if os.path.isdir(source):
        path: str | None = os.path.join(source, PREPROCESSOR_FILE)
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(source, PREPROCESSOR_FILE, local_files_only=_offline())
        except Exception:  # optional file: fall back to CLIP's defaults
            path = None
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise VimwError(f"cannot read the image processor config {path}: {exc}") from exc
    return data if isinstance(data, dict) else None


def _preprocess(processor: dict | None, image_size: int) -> Preprocess:
    """Preprocess from a CLIPImageProcessor config (mean, std, crop size) or CLIP's defaults."""
    processor = processor or {}
    mean = _triple(processor.get("image_mean"), CLIP_MEAN)
    std = _triple(processor.get("image_std"), CLIP_STD)
    return Preprocess(_crop_size(processor.get("crop_size"), image_size), mean, std)


def _triple(value: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return tuple(float(v) for v in value)  # type: ignore[return-value]
    return default


def _crop_size(value: Any, default: int) -> int:
    # Old processor configs store an int, newer ones {"height": h, "width": w}.
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and value.get("height"):
        return int(value["height"])
    return default


# -- a tiny random model for tests ------------------------------------------------------
@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # HF initialises weights from torch's global RNG; don't disturb the caller's stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


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
    with _seeded(seed):
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

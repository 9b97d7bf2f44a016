"""What every HF vision family (CLIP, ViT, DINOv2, SigLIP) shares: the family table, the
backbone with ViM's two sites per block, and the helpers that read a checkpoint locally.

The HF model only supplies the weights. One encoder loop, shared by every family, runs
the pre-norm blocks so that a plug-in module sits parallel to each sublayer, fed the
LayerNorm's output (ViM, Feng et al. 2023)::

    h1 = LN1(x);  x = x + s1 * Attn(h1) + M_att(h1)
    h2 = LN2(x);  x = x + s2 * MLP(h2)  + M_mlp(h2)

``s1``/``s2`` are DINOv2's layer scales (1 for the other families). ``inner``-tap
modules (LoRA) read the input ``z`` of the sublayer's output projection (the merged
heads, resp. the MLP's hidden activations) and add to that projection's output, before
the layer scale: exactly a LoRA update of that ``nn.Linear``, so it folds into its
weight and maps one to one onto a PEFT LoRA adapter.

What differs between families is data, held in one ``Family`` row each: where the
layers and their sublayers live (transformers 5 names first, then transformers 4
names), whether a class token leads the sequence (SigLIP has none: its tokens are a
plain square grid, pooled by its attention-pooling head, or by the mean without one),
the layer scale, the norm before the encoder (CLIP) and the default normalisation.

Building a model by name is ``hf_vit``'s job (and ``hf_clip``'s for CLIP); both import
this file, which imports neither, and transformers is never imported here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vimw.backbones.base import Backbone, Bypass, Preprocess, Site, hash_state_dict
from vimw.errors import VimwError
from vimw.io.names import HF_PREPROCESSOR_FILE as PREPROCESSOR_FILE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# -- the per-family table -----------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """Where one family keeps its parts. Each path lists candidates, tried in order.

    Paths of ``layers``, ``pre_norm`` and ``final_norm`` are relative to the tower;
    the others relative to one encoder layer. ``mlp_in`` is the MLP's first linear (or
    its gate for SwiGLU, with ``mlp_up`` its second input linear); ``mlp_out`` the MLP's
    output projection; ``act`` its activation (SwiGLU uses SiLU).
    """

    name: str
    model_types: tuple[str, ...]  # config.model_type values (vision tower, full model)
    model_class: str  # the transformers class loaded and, for PEFT, the adapter's base model
    config_class: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    cls_token: bool
    layers: tuple[str, ...]
    norm1: tuple[str, ...]
    norm2: tuple[str, ...]
    q: tuple[str, ...]
    k: tuple[str, ...]
    v: tuple[str, ...]
    attn_out: tuple[str, ...]
    mlp_in: tuple[str, ...]
    mlp_out: tuple[str, ...]
    act: tuple[str, ...] = ()
    mlp_up: tuple[str, ...] = ()
    layer_scale: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    pre_norm: tuple[str, ...] = ()
    final_norm: tuple[str, ...] = ()
    norm_in_sequence: bool = True  # HF's last_hidden_state is after the final norm
    pool: str = "cls"  # "cls": final norm of the class token; "head": attention head, else token mean
    interpolate_kwarg: bool = True  # embeddings take ``interpolate_pos_encoding``
    full_model_types: tuple[str, ...] = ()  # model types holding the vision config under ``vision_config``


_CLIP_LIKE: dict[str, tuple[str, ...]] = {
    "layers": ("encoder.layers",),
    "norm1": ("layer_norm1",),
    "norm2": ("layer_norm2",),
    "q": ("self_attn.q_proj",),
    "k": ("self_attn.k_proj",),
    "v": ("self_attn.v_proj",),
    "attn_out": ("self_attn.out_proj",),
    "mlp_in": ("mlp.fc1",),
    "mlp_out": ("mlp.fc2",),
    "act": ("mlp.activation_fn",),
}

# ViT and DINOv2 name their attention projections alike (transformers 5 names first, then 4's).
_VIT_ATTENTION: dict[str, tuple[str, ...]] = {
    "q": ("attention.q_proj", "attention.attention.query"),
    "k": ("attention.k_proj", "attention.attention.key"),
    "v": ("attention.v_proj", "attention.attention.value"),
    "attn_out": ("attention.o_proj", "attention.output.dense"),
}

FAMILIES: dict[str, Family] = {
    "clip": Family(
        "clip", ("clip_vision_model", "clip"), "CLIPVisionModel", "CLIPVisionConfig", CLIP_MEAN, CLIP_STD, True,
        pre_norm=("pre_layrnorm",), final_norm=("post_layernorm",), norm_in_sequence=False,
        full_model_types=("clip",), **_CLIP_LIKE,
    ),
    "siglip": Family(
        "siglip", ("siglip_vision_model", "siglip"), "SiglipVisionModel", "SiglipVisionConfig", HALF, HALF, False,
        final_norm=("post_layernorm",), pool="head", full_model_types=("siglip",), **_CLIP_LIKE,
    ),
    "vit": Family(
        "vit", ("vit",), "ViTModel", "ViTConfig", HALF, HALF, True,
        layers=("layers", "encoder.layer"),
        norm1=("layernorm_before",),
        norm2=("layernorm_after",),
        **_VIT_ATTENTION,
        mlp_in=("mlp.fc1", "intermediate.dense"),
        mlp_out=("mlp.fc2", "output.dense"),
        act=("mlp.activation_fn", "intermediate.intermediate_act_fn"),
        final_norm=("layernorm",),
    ),
    "dinov2": Family(
        "dinov2", ("dinov2",), "Dinov2Model", "Dinov2Config", IMAGENET_MEAN, IMAGENET_STD, True,
        layers=("encoder.layer",),
        norm1=("norm1",),
        norm2=("norm2",),
        **_VIT_ATTENTION,
        # Plain MLP (fc1, act, fc2), or SwiGLU (transformers 5: gate/up/down; 4: one fused weights_in).
        mlp_in=("mlp.fc1", "mlp.gate_proj", "mlp.weights_in"),
        mlp_up=("mlp.up_proj",),
        mlp_out=("mlp.fc2", "mlp.down_proj", "mlp.weights_out"),
        act=("mlp.activation_fn", "mlp.activation"),
        layer_scale=(("layer_scale1",), ("layer_scale2",)),
        final_norm=("layernorm",),
        interpolate_kwarg=False,  # DINOv2 always interpolates its position embeddings
    ),
}


def family_for_model_type(model_type: str | None) -> Family:
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise VimwError(
        f"HF model type {model_type!r} is not a supported vision transformer; vimw supports {', '.join(known)} "
        "(ViTModel, Dinov2Model, SiglipVisionModel, CLIPVisionModel)"
    )


def _first(root: nn.Module, candidates: tuple[str, ...], what: str, where: str) -> str:
    """The first candidate path that exists under ``root``; an error when none does."""
    path = _optional(root, candidates)
    if path:
        return path
    raise VimwError(f"{where}: found no {what} (looked for {', '.join(candidates)}); unsupported transformers layout")


# -- the backbone -----------------------------------------------------------------------
class HFVisionBackbone(Backbone):
    """An HF vision transformer with sites ``layer{i:02d}_attn`` and ``layer{i:02d}_mlp``.

    ``tower`` is the HF module holding the embeddings, the encoder layers and the final
    norm (and SigLIP's pooling head). Its weights are the backbone's state.
    """

    def __init__(self, arch: str, family: Family, tower: nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        config = tower.config
        self.arch = arch
        self.family = family
        self.tower = tower
        self.preprocess = preprocess
        self.native_size = int(config.image_size)
        self.patch_size = int(config.patch_size)
        self.num_heads = int(config.num_attention_heads)
        self.feature_dim = int(config.hidden_size)
        where = f"{arch} ({family.name})"
        self._layers_path = _first(tower, family.layers, "encoder layers", where)
        self.num_blocks = len(tower.get_submodule(self._layers_path))
        if self.num_blocks == 0:
            raise VimwError(f"{where}: the encoder has no layers")
        layer = self.layer(0)
        roles = ("norm1", "norm2", "q", "k", "v", "attn_out", "mlp_in", "mlp_out")
        self._paths = {role: _first(layer, getattr(family, role), role, where) for role in roles}
        self._paths["mlp_up"] = _optional(layer, family.mlp_up)
        self._paths["act"] = _optional(layer, family.act)
        self._swiglu = self._paths["mlp_in"].endswith(("gate_proj", "weights_in"))
        self._scales = (
            tuple(_first(layer, c, "layer scale", where) for c in family.layer_scale) if family.layer_scale else None
        )
        self._pre_norm = _optional(tower, family.pre_norm)
        self._final_norm = _first(tower, family.final_norm, "final norm", where)
        inner = int(layer.get_submodule(self._paths["mlp_out"]).in_features)
        layout = "nlc_cls" if family.cls_token else "nlc"
        self.sites = block_sites(self.num_blocks, self.feature_dim, inner, layout)
        self.class_names = None
        if preprocess.size < self.patch_size:
            raise VimwError(f"{arch}: image size {preprocess.size} is smaller than one patch ({self.patch_size} px)")

    # -- parts ---------------------------------------------------------------------------
    def layer(self, index: int) -> nn.Module:
        return self.tower.get_submodule(self._layers_path)[index]

    def projection_path(self, site: Site) -> str:
        """The site's output projection, as a path inside the tower (for folding and PEFT)."""
        role = "attn_out" if site.kind == "attn" else "mlp_out"
        return f"{self._layers_path}.{site.block}.{self._paths[role]}"

    def projection(self, site: Site) -> nn.Linear:
        return self.tower.get_submodule(self.projection_path(site))

    # -- the contract --------------------------------------------------------------------
    def stem(self, pixels: torch.Tensor) -> torch.Tensor:
        embeddings = self.tower.embeddings
        if self.family.interpolate_kwarg:
            # Other resolutions than the checkpoint's interpolate the position embeddings.
            resize = tuple(pixels.shape[-2:]) != (self.native_size, self.native_size)
            hidden = embeddings(pixels, interpolate_pos_encoding=resize)
        else:
            hidden = embeddings(pixels)
        if self._pre_norm:
            hidden = self.tower.get_submodule(self._pre_norm)(hidden)
        return hidden

    def run_block(self, index: int, hidden: torch.Tensor, bypass: Bypass | None) -> torch.Tensor:
        layer = self.layer(index)
        part = layer.get_submodule
        attn_site, mlp_site = self.sites[2 * index], self.sites[2 * index + 1]
        scales = (part(self._scales[0]), part(self._scales[1])) if self._scales else (None, None)
        h1 = part(self._paths["norm1"])(hidden)
        hidden = hidden + _sublayer(part(self._paths["attn_out"]), h1, self._merged_heads(layer, h1),
                                    _module(bypass, attn_site), scales[0])
        h2 = part(self._paths["norm2"])(hidden)
        return hidden + _sublayer(part(self._paths["mlp_out"]), h2, self._mlp_hidden(layer, h2),
                                  _module(bypass, mlp_site), scales[1])

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.tower.get_submodule(self._final_norm)(hidden)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.family.cls_token:
            return self.final_norm(hidden[:, 0])
        hidden = self.final_norm(hidden)
        head = getattr(self.tower, "head", None) if self.family.pool == "head" else None
        return head(hidden) if head is not None else hidden.mean(dim=1)

    def hf_last_hidden_state(self, pixels: torch.Tensor, bypass: Bypass | None = None) -> torch.Tensor:
        """The token sequence as HF's ``last_hidden_state`` defines it for this family."""
        hidden = self.forward_blocks(self.stem(pixels), bypass)
        return self.final_norm(hidden) if self.family.norm_in_sequence else hidden

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        raise VimwError(f"backbone {self.arch} has no classifier head; train a head on its pooled features")

    # -- identity ------------------------------------------------------------------------
    def fingerprint(self) -> str:
        # Hash a location-free architecture key, not ``arch``: the same weights loaded by
        # hub name or from a directory anywhere on disk must give the same fingerprint.
        if self._fingerprint is None:
            self._fingerprint = hash_state_dict(self.weights_key(), self.state_dict())
        return self._fingerprint

    def weights_key(self) -> str:
        config = self.tower.config
        inner = self.sites[1].inner_channels
        extra = (":LS" if self._scales else "") + (":SwiGLU" if self._swiglu else "")
        return (
            f"hf_{self.family.name}_vision:L{self.num_blocks}:D{self.feature_dim}:F{inner}:H{self.num_heads}"
            f":P{self.patch_size}:S{self.native_size}:{getattr(config, 'hidden_act', '')}{extra}"
        )

    def describe(self) -> dict:
        return {**super().describe(), "family": self.family.name, "patch_size": self.patch_size}

    # -- sublayers -----------------------------------------------------------------------
    def _merged_heads(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention up to (not including) the output projection."""
        part = layer.get_submodule
        batch, length, _ = h.shape
        q, k, v = (_split_heads(part(self._paths[r])(h), self.num_heads) for r in ("q", "k", "v"))
        # SDPA's default scale, head_dim ** -0.5, is the one of all four families. The
        # backbone is frozen (eval mode) when it runs, so attention dropout is off.
        merged = nn.functional.scaled_dot_product_attention(q, k, v)
        return merged.transpose(1, 2).reshape(batch, length, -1)

    def _mlp_hidden(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """The MLP's hidden activations: the input of its output projection."""
        part = layer.get_submodule
        first = part(self._paths["mlp_in"])(h)
        if not self._swiglu:
            return part(self._paths["act"])(first)
        if self._paths["mlp_up"]:
            return nn.functional.silu(first) * part(self._paths["mlp_up"])(h)
        gate, up = first.chunk(2, dim=-1)
        return nn.functional.silu(gate) * up


def _optional(root: nn.Module, candidates: tuple[str, ...]) -> str:
    """The first candidate path that exists under ``root``; "" when none does (an optional part)."""
    for path in candidates:
        try:
            root.get_submodule(path)
        except AttributeError:
            continue
        return path
    return ""


def _split_heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``N x L x C`` -> ``N x heads x L x C/heads``."""
    return t.view(t.shape[0], t.shape[1], num_heads, -1).transpose(1, 2)


def _module(bypass: Bypass | None, site: Site) -> nn.Module | None:
    return bypass.get(site.name) if bypass else None


def _sublayer(
    proj: nn.Module, h: torch.Tensor, z: torch.Tensor, module: nn.Module | None, scale: nn.Module | None
) -> torch.Tensor:
    """``scale(proj(z) [+ m(z)]) [+ m(h)]``: the sublayer's residual update with the module at its tap."""
    out = proj(z)
    tap = getattr(module, "tap", "input") if module is not None else None
    if tap not in (None, "input", "inner"):
        raise VimwError(f"unknown module tap {tap!r}; expected 'input' or 'inner'")
    if tap == "inner":
        out = out + module(z)
    if scale is not None:
        out = scale(out)
    if tap == "input":
        out = out + module(h)
    return out


def block_sites(num_layers: int, hidden: int, intermediate: int, layout: str) -> tuple[Site, ...]:
    sites = []
    for i in range(num_layers):
        sites.append(Site(f"layer{i:02d}_attn", i, hidden, hidden, 1, layout, hidden, "attn"))
        sites.append(Site(f"layer{i:02d}_mlp", i, hidden, hidden, 1, layout, intermediate, "mlp"))
    return tuple(sites)

def offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else with separators is a path.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or os.path.isabs(name)


def resolve_source(name_or_path: str, what: str = "HF") -> str:
    """The absolute directory for local models, or the hub id unchanged."""
    if not name_or_path or not name_or_path.strip():
        raise VimwError(f"an {what} backbone needs a model name or directory, e.g. 'hf:openai/clip-vit-base-patch16'")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise VimwError(f"{what} model path {name_or_path!r} is a file; expected a directory written by save_pretrained")
    if _looks_like_path(name_or_path):
        raise VimwError(f"{what} model directory {name_or_path!r} does not exist")
    return name_or_path


def arch_name(name_or_path: str, source: str) -> str:
    # A directory's absolute path changes when it moves; its name is what a user
    # recognises. The fingerprint does not depend on it (see ``weights_key``).
    return "hf:" + (Path(source).name if os.path.isdir(source) else name_or_path)


# -- preprocessing ----------------------------------------------------------------------
def read_processor_config(source: str) -> dict | None:
    """The checkpoint's image processor settings, if any are available locally."""
    if os.path.isdir(source):
        path: str | None = os.path.join(source, PREPROCESSOR_FILE)
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(source, PREPROCESSOR_FILE, local_files_only=offline_mode())
        except Exception:  # noqa: BLE001  (optional file: fall back to the family's defaults)
            path = None
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise VimwError(f"cannot read the image processor config {path}: {exc}") from exc
    return data if isinstance(data, dict) else None


def preprocess_from(
    processor: dict | None,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> Preprocess:
    """Mean, std and the model's input side from an image processor config (or the defaults).

    The side is the centre crop when the processor crops, else its resize target, else
    the config's image size.
    """
    processor = processor or {}
    size = None
    if processor.get("do_center_crop", "crop_size" in processor):
        size = _side(processor.get("crop_size"))
    if size is None:
        size = _side(processor.get("size"))
    return Preprocess(size or image_size, triple(processor.get("image_mean"), mean), triple(processor.get("image_std"), std))


def triple(value: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return tuple(float(v) for v in value)  # type: ignore[return-value]
    return default


def _side(value: Any) -> int | None:
    # Old processor configs store an int, newer ones {"height": h, "width": w} or {"shortest_edge": s}.
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, dict):
        for key in ("height", "shortest_edge"):
            if isinstance(value.get(key), int) and value[key] > 0:
                return int(value[key])
    return None


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    # HF initialises weights from torch's global RNG; don't disturb the caller's stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield



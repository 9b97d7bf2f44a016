"""PEFT LoRA adapters <-> vimw ``lora`` zoo modules on HF vision backbones (CLIP, ViT, DINOv2, SigLIP).

A vimw ``lora`` module at site ``layer{i}_attn`` resp. ``layer{i}_mlp`` adds
``(alpha / rank) * B A z`` to the output of that block's attention output projection
resp. MLP output linear (CLIP and SigLIP: ``self_attn.out_proj`` / ``mlp.fc2``; ViT and
DINOv2: ``attention.o_proj`` / ``mlp.fc2``, in transformers 5), where ``z`` is the
projection's input: exactly what PEFT's LoRA layer computes on the same ``nn.Linear``
(``scaling = lora_alpha / r``). So the weights map one to one::

    vimw  layer03_attn.lora_A.weight  <->  PEFT  base_model.model.<prefix>encoder.layers.3.self_attn.out_proj.lora_A.weight
    vimw  layer03_mlp.lora_B.weight   <->  PEFT  base_model.model.<prefix>encoder.layers.3.mlp.fc2.lora_B.weight

The paths come from the backbone (``HFVisionBackbone.projection_path``); ``<prefix>`` is
where the family's model class (``CLIPVisionModel``, ``ViTModel``, ``Dinov2Model``,
``SiglipVisionModel``) of the installed transformers keeps its encoder: ``vision_model.``
for CLIP and SigLIP in transformers 4, nothing in transformers 5. The exported adapter
loads with ``peft.PeftModel.from_pretrained(<ModelClass>.from_pretrained(dir), out_dir)``.

Only safetensors are read and written; a pickled ``adapter_model.bin`` is refused.
PEFT (the ``peft`` extra) is imported only when a function is called.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch

from vimw._extras import require
from vimw.backbones.base import Backbone
from vimw.errors import FormatError, VimwError
from vimw.io import load_tensors, read_json, save_tensors, write_json
from vimw.io.names import PEFT_ADAPTER_CONFIG_FILE as ADAPTER_CONFIG
from vimw.io.names import PEFT_ADAPTER_WEIGHTS_FILE as ADAPTER_WEIGHTS

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
PEFT_PREFIX = "base_model.model."
_ADAPTER_KEY = re.compile(r"^base_model\.model\.(?:vision_model\.)?(?P<path>.+)\.lora_(?P<ab>[AB])\.weight$")


def _peft() -> ModuleType:
    return require("peft", "peft", "Exporting or importing PEFT LoRA adapters")


def _hf_backbone(backbone: Backbone) -> Any:
    from vimw.backbones.hf_vit import HFVisionBackbone

    if not isinstance(backbone, HFVisionBackbone):
        raise VimwError(
            "PEFT LoRA interop needs an HF transformers backbone ('hf:<name or dir>': an HF CLIP backbone, "
            f"or a ViT, DINOv2 or SigLIP one); {getattr(backbone, 'arch', type(backbone).__name__)} is not one"
        )
    return backbone


def _projection_paths(backbone: Any) -> dict[str, str]:
    """Site name -> its output projection's path in the tower (``encoder.layers.3.mlp.fc2``)."""
    return {site.name: backbone.projection_path(site) for site in backbone.sites}


def _projection_names(backbone: Any) -> str:
    first = _projection_paths(backbone)
    return " / ".join(p.replace(".0.", ".N.", 1) for p in list(first.values())[:2])


def _model_prefix(backbone: Any) -> str:
    """Where the family's model class keeps the encoder (built on the meta device, no weights)."""
    transformers = require("transformers", "clip", "HF vision backbones")
    class_name = backbone.family.model_class
    with torch.device("meta"):
        # A copy: building a model may set attributes on its config, which the live tower shares.
        model = getattr(transformers, class_name)(copy.deepcopy(backbone.tower.config))
    suffix = backbone.projection_path(backbone.sites[0])
    for name, _ in model.named_modules():
        if name == suffix or name.endswith("." + suffix):
            return name[: len(name) - len(suffix)]
    raise VimwError(f"transformers {transformers.__version__}: {class_name} has no {suffix}; cannot name PEFT targets")


def _peft_source(backbone: Any) -> str:
    source = backbone.record().source
    return source[3:] if source.startswith("hf:") else source


# -- export ------------------------------------------------------------------------------
def export_peft_lora(zoo: Any, name: str, backbone: Backbone, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write zoo module ``name`` (kind ``lora``) as a PEFT LoRA adapter directory.

    ``backbone`` must be the HF backbone the module was trained on (its fingerprint
    is checked). ``out_dir`` receives ``adapter_config.json`` and
    ``adapter_model.safetensors``, each written atomically; existing adapter files are
    only replaced with ``overwrite``. Returns ``out_dir``.
    """
    peft = _peft()
    clip = _hf_backbone(backbone)
    manifest = zoo.manifest(name)
    if manifest.kind != "lora":
        raise VimwError(
            f"module {name!r} is a {manifest.kind} module; only lora modules can be exported as PEFT LoRA adapters"
        )
    module = zoo.load(name, clip)  # checks the fingerprint and the weights' sha256
    config = module.config
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise VimwError(f"{out_dir} is a file; PEFT adapters are directories")
    existing = [f for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if (out_dir / f).exists()]
    if existing and not overwrite:
        raise VimwError(f"{out_dir} already holds a PEFT adapter ({', '.join(existing)}); pass overwrite=True / --overwrite")

    prefix = _model_prefix(clip)
    every = _projection_paths(clip)
    paths = {site.name: every[site.name] for site in module.sites}
    # An anchored regex over the covered projections only (no other layer, no text tower
    # of a full CLIPModel); the optional ``vision_model.`` also matches transformers 4.
    target = r"^(?:vision_model\.)?(?:" + "|".join(re.escape(p) for p in paths.values()) + r")$"
    alpha: float | int = config.alpha
    if float(alpha).is_integer():
        alpha = int(alpha)  # PEFT types lora_alpha as int; the scale alpha / r is the same
    lora_config = peft.LoraConfig(
        r=config.rank,
        lora_alpha=alpha,
        target_modules=target,
        lora_dropout=0.0,
        bias="none",
        base_model_name_or_path=_peft_source(clip),
        inference_mode=True,
    )
    tensors: dict[str, torch.Tensor] = {}
    for site_name, path in paths.items():
        lora = module[site_name]
        key = PEFT_PREFIX + prefix + path
        tensors[f"{key}.lora_A.weight"] = lora.lora_A.weight.detach().float().cpu()
        tensors[f"{key}.lora_B.weight"] = lora.lora_B.weight.detach().float().cpu()

    payload = lora_config.to_dict()
    for key, value in payload.items():
        if isinstance(value, set):
            payload[key] = sorted(value)
    payload.setdefault("peft_version", getattr(peft, "__version__", "unknown"))
    payload["peft_type"] = str(getattr(payload["peft_type"], "value", payload["peft_type"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    # Weights first: a config next to no (or stale) weights would look like a whole adapter.
    save_tensors(out_dir / ADAPTER_WEIGHTS, tensors, metadata={"format": "pt"})
    write_json(out_dir / ADAPTER_CONFIG, payload)
    return out_dir


# -- import ------------------------------------------------------------------------------
def _read_adapter(adapter_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    if not adapter_dir.is_dir():
        raise VimwError(f"PEFT adapter directory {adapter_dir} does not exist")
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        pickles = sorted(p.name for p in adapter_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise FormatError(
                f"{adapter_dir}: refusing the pickle-based adapter weights {pickles}; vimw only loads "
                f"{ADAPTER_WEIGHTS} (re-save the adapter with PEFT's save_pretrained(..., safe_serialization=True))"
            )
        raise FormatError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}")
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise FormatError(f"{adapter_dir}: no {ADAPTER_CONFIG}")
    return read_json(adapter_dir / ADAPTER_CONFIG), load_tensors(weights)


def _number(raw: dict, key: str, where: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FormatError(f"{where}: {key!r} must be a finite number, found {value!r}")
    return value


def _check_supported(raw: dict, where: str) -> None:
    """Refuse every PEFT option a vimw lora module cannot represent exactly."""
    peft_type = raw.get("peft_type")
    if peft_type != "LORA":
        raise VimwError(f"{where}: a {peft_type} adapter; only PEFT LoRA adapters can be imported")
    unsupported = {
        "use_dora": bool(raw.get("use_dora")),
        "fan_in_fan_out": bool(raw.get("fan_in_fan_out")),
        "lora_bias": bool(raw.get("lora_bias")),
        "bias": raw.get("bias", "none") not in (None, "none"),
        "modules_to_save": bool(raw.get("modules_to_save")),
        "target_parameters": bool(raw.get("target_parameters")),
        "layer_replication": bool(raw.get("layer_replication")),
        "trainable_token_indices": bool(raw.get("trainable_token_indices")),
        "use_qalora": bool(raw.get("use_qalora")),
    }
    bad = [f"{k}={raw.get(k)!r}" for k, v in unsupported.items() if v]
    if bad:
        raise VimwError(f"{where}: PEFT options vimw's lora module cannot represent: {', '.join(bad)}")
    r, alpha = raw.get("r"), raw.get("lora_alpha")
    for pattern, default in (("rank_pattern", r), ("alpha_pattern", alpha)):
        values = raw.get(pattern) or {}
        if not isinstance(values, dict):
            raise FormatError(f"{where}: {pattern!r} must be an object")
        if any(v != default for v in values.values()):
            raise VimwError(f"{where}: {pattern} {values} gives sites different values; a vimw lora module has one rank and alpha")


def _targeted(raw: dict, name: str) -> bool:
    """Whether PEFT would put this adapter on the module called ``name`` (PEFT's own matching)."""
    from peft.tuners.tuners_utils import check_target_module_exists

    fields = ("target_modules", "exclude_modules", "modules_to_save", "target_parameters",
              "layers_to_transform", "layers_pattern")
    found = check_target_module_exists(SimpleNamespace(**{f: raw.get(f) for f in fields}), name)
    return bool(found) and type(found).__name__ != "_ExcludedModule"


def _config_sites(raw: dict, backbone: Any, where: str) -> set[str]:
    """The vimw sites the config's targets select; a target without a vimw site is refused."""
    if not raw.get("target_modules"):
        raise FormatError(f"{where}: no 'target_modules'")
    by_path = {path: site for site, path in _projection_paths(backbone).items()}
    sites: set[str] = set()
    others: list[str] = []
    for name, child in backbone.tower.named_modules():
        if not isinstance(child, torch.nn.Linear):
            continue
        if not any(_targeted(raw, prefix + name) for prefix in ("", "vision_model.")):
            continue
        if name in by_path:
            sites.add(by_path[name])
        else:
            others.append(name)
    if others:
        raise VimwError(
            f"{where}: the adapter targets {others[:5]}{' ...' if len(others) > 5 else ''}; vimw lora sites are "
            f"only each block's attention output projection and MLP output linear ({_projection_names(backbone)})"
        )
    return sites


def import_peft_lora(
    adapter_dir: str | Path,
    zoo: Any,
    name: str,
    backbone: Backbone,
    *,
    overwrite: bool = False,
) -> Any:
    """Add a PEFT LoRA adapter (safetensors) on an HF vision model to ``zoo`` as lora module ``name``.

    The adapter must target only the encoder layers' attention output projections and
    MLP output linears (CLIP: ``self_attn.out_proj`` / ``mlp.fc2``), with one rank and alpha, no bias and no DoRA; every tensor must fit
    ``backbone``. rsLoRA (``scale = alpha / sqrt(r)``) is stored as the equivalent vimw
    alpha. Returns the new module's manifest.
    """
    from vimw.modules import LoRAConfig, ModuleSet
    from vimw.zoo.manifest import ModuleManifest, check_module_name

    _peft()
    check_module_name(name)
    clip = _hf_backbone(backbone)
    by_path = {path: site for site, path in _projection_paths(clip).items()}
    adapter_dir = Path(adapter_dir).expanduser().resolve()
    where = str(adapter_dir / ADAPTER_CONFIG)
    raw, tensors = _read_adapter(adapter_dir)
    _check_supported(raw, where)
    r = raw.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise FormatError(f"{where}: 'r' must be a positive integer, found {r!r}")
    lora_alpha = _number(raw, "lora_alpha", where)
    scale = lora_alpha / math.sqrt(r) if raw.get("use_rslora") else lora_alpha / r
    dropout = _number(raw, "lora_dropout", where) if raw.get("lora_dropout") is not None else 0.0

    # The weights: every key must be a LoRA A/B matrix of a covered projection.
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in tensors.items():
        match = _ADAPTER_KEY.match(key)
        if match is None or match["path"] not in by_path:
            unknown.append(key)
            continue
        pairs.setdefault(by_path[match["path"]], {})[match["ab"]] = value
    weights_file = adapter_dir / ADAPTER_WEIGHTS
    if unknown:
        raise VimwError(
            f"{weights_file}: tensors with no vimw lora site: {sorted(unknown)[:5]}"
            f"{' ...' if len(unknown) > 5 else ''} (vimw maps only {_projection_names(clip)} "
            "lora_A / lora_B of this backbone's encoder layers)"
        )
    if not pairs:
        raise FormatError(f"{weights_file}: holds no LoRA weights")
    by_name = {site.name: site for site in clip.sites}
    for site_name, pair in sorted(pairs.items()):
        if site_name not in by_name:
            raise VimwError(f"{weights_file}: weights for {site_name}, but the backbone has {clip.num_blocks} blocks")
        if set(pair) != {"A", "B"}:
            raise FormatError(f"{weights_file}: {site_name} has lora_{'A' if 'A' in pair else 'B'} but not the other")
        site = by_name[site_name]
        for ab, want in (("A", (r, site.inner_channels)), ("B", (site.out_channels, r))):
            got = tuple(pair[ab].shape)
            if got != want or not pair[ab].is_floating_point():
                raise FormatError(
                    f"{weights_file}: {site_name} lora_{ab} is {got} {pair[ab].dtype}; "
                    f"r={r} on this backbone needs a float {want}"
                )
    targeted = _config_sites(raw, clip, where)
    if targeted != set(pairs):
        raise VimwError(
            f"{where}: the config targets {sorted(targeted)} but the weights cover {sorted(pairs)}; "
            "PEFT would not load this adapter as saved"
        )

    sites = [s.name for s in clip.sites if s.name in pairs]  # backbone order
    config = LoRAConfig(sites=sites, rank=r, alpha=float(scale * r), dropout=float(dropout))
    module = ModuleSet.create(config, clip.sites)
    module.load_weights({f"{site}.lora_{ab}.weight": pairs[site][ab].float() for site in sites for ab in "AB"})
    module.eval().requires_grad_(False)
    manifest = ModuleManifest(
        name=name,
        module=config.to_dict(),
        backbone=clip.record().to_dict(),
        task={"name": "peft-import", "dataset": adapter_dir.name, "source": str(adapter_dir),
              "base_model_name_or_path": raw.get("base_model_name_or_path"),
              "peft_version": raw.get("peft_version")},
        weights={},
        metrics={},
        training={"imported_from": "peft", "r": r, "lora_alpha": lora_alpha,
                  "use_rslora": bool(raw.get("use_rslora")), "target_modules": raw.get("target_modules")},
    )
    return zoo.add(manifest, module, overwrite=overwrite)


__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "export_peft_lora", "import_peft_lora"]

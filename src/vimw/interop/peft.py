"""PEFT adapters <-> vimw zoo modules on HF vision backbones (CLIP, ViT, DINOv2, SigLIP).

A module kind that declares a PEFT mapping (``register_module_kind(..., peft=...)``;
today ``lora``, see ``vimw.modules.lora.peft``) brings its side: PEFT's adapter type,
the config's options and the per-site tensor names. This file holds what every kind
shares: which backbone layer a site is, PEFT's key prefixes and its target matching.

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
import re
from dataclasses import replace
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
from vimw.modules.registry import ModuleKind, lookup_module_kind, module_kinds_where

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
PEFT_PREFIX = "base_model.model."


def _adapter_key(names: tuple[str, ...]) -> re.Pattern:
    """PEFT's key of a site tensor: prefix, the layer's path, the kind's tensor name."""
    alternatives = "|".join(re.escape(n) for n in names)
    return re.compile(rf"^base_model\.model\.(?:vision_model\.)?(?P<path>.+)\.(?P<name>{alternatives})$")


def _mapped_kinds() -> str:
    return ", ".join(f"{k.name} ({k.peft_type})" for k in module_kinds_where(lambda k: k.peft is not None)) or "none"


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
    """Write zoo module ``name`` (a kind with a PEFT mapping: ``lora``) as a PEFT adapter directory.

    ``backbone`` must be the HF backbone the module was trained on (its fingerprint
    is checked). ``out_dir`` receives ``adapter_config.json`` and
    ``adapter_model.safetensors``, each written atomically; existing adapter files are
    only replaced with ``overwrite``. Returns ``out_dir``.
    """
    peft = _peft()
    clip = _hf_backbone(backbone)
    manifest = zoo.manifest(name)
    kind = lookup_module_kind(manifest.kind)
    if kind is None or kind.peft is None:
        raise VimwError(
            f"module {name!r} is a {manifest.kind} module, a kind with no PEFT mapping; "
            f"only these kinds export as PEFT adapters: {_mapped_kinds()}"
        )
    mapping = kind.peft
    module = zoo.load(name, clip)  # checks the fingerprint and the weights' sha256
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
    peft_config = getattr(peft, mapping.config_class)(
        **mapping.to_peft(module.config),
        target_modules=target,
        base_model_name_or_path=_peft_source(clip),
        inference_mode=True,
    )
    state = module.state_dict()
    tensors = {
        f"{PEFT_PREFIX}{prefix}{path}.{weight}": state[f"{site_name}.{weight}"].detach().float().cpu()
        for site_name, path in paths.items()
        for weight in mapping.weight_names
    }

    payload = peft_config.to_dict()
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


def _kind_for(raw: dict, where: str) -> ModuleKind:
    """The module kind whose PEFT mapping reads this adapter's ``peft_type``."""
    peft_type = raw.get("peft_type")
    for kind in module_kinds_where(lambda k: k.peft is not None and k.peft_type == peft_type):
        return kind
    raise VimwError(f"{where}: a {peft_type} adapter; vimw imports only these PEFT types: {_mapped_kinds()}")


def _targeted(raw: dict, name: str) -> bool:
    """Whether PEFT would put this adapter on the module called ``name`` (PEFT's own matching)."""
    from peft.tuners.tuners_utils import check_target_module_exists

    fields = ("target_modules", "exclude_modules", "modules_to_save", "target_parameters",
              "layers_to_transform", "layers_pattern")
    found = check_target_module_exists(SimpleNamespace(**{f: raw.get(f) for f in fields}), name)
    return bool(found) and type(found).__name__ != "_ExcludedModule"


def _config_sites(raw: dict, backbone: Any, kind: str, where: str) -> set[str]:
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
            f"{where}: the adapter targets {others[:5]}{' ...' if len(others) > 5 else ''}; vimw {kind} sites are "
            f"only each block's attention output projection and MLP output linear ({_projection_names(backbone)})"
        )
    return sites


def _site_tensors(tensors: dict[str, torch.Tensor], kind: ModuleKind, backbone: Any,
                  weights_file: Path) -> dict[str, dict[str, torch.Tensor]]:
    """site -> {tensor name: tensor}; every key must be one of the kind's tensors at a covered projection."""
    names = kind.peft.weight_names
    key = _adapter_key(names)
    by_path = {path: site for site, path in _projection_paths(backbone).items()}
    found: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for name, value in tensors.items():
        match = key.match(name)
        if match is None or match["path"] not in by_path:
            unknown.append(name)
            continue
        found.setdefault(by_path[match["path"]], {})[match["name"]] = value
    if unknown:
        raise VimwError(
            f"{weights_file}: tensors with no vimw {kind.name} site: {sorted(unknown)[:5]}"
            f"{' ...' if len(unknown) > 5 else ''} (vimw maps only {_projection_names(backbone)} "
            f"{' / '.join(names)} of this backbone's encoder layers)"
        )
    if not found:
        raise FormatError(f"{weights_file}: holds no {kind.peft_type} weights")
    for site_name, present in sorted(found.items()):
        missing = [n for n in names if n not in present]
        if missing:
            raise FormatError(f"{weights_file}: {site_name} has {', '.join(sorted(present))} but not {', '.join(missing)}")
    return found


def _check_shapes(found: dict[str, dict[str, torch.Tensor]], expected: dict[str, torch.Tensor],
                  config: Any, weights_file: Path) -> None:
    """Every tensor must be a float of the shape the module built from the config expects."""
    for site_name, present in sorted(found.items()):
        for name, tensor in present.items():
            want, got = tuple(expected[f"{site_name}.{name}"].shape), tuple(tensor.shape)
            if got != want or not tensor.is_floating_point():
                raise FormatError(
                    f"{weights_file}: {site_name} {name} is {got} {tensor.dtype}; "
                    f"{config} on this backbone needs a float {want}"
                )


def import_peft_lora(
    adapter_dir: str | Path,
    zoo: Any,
    name: str,
    backbone: Backbone,
    *,
    overwrite: bool = False,
) -> Any:
    """Add a PEFT adapter (safetensors) on an HF vision model to ``zoo`` as module ``name``.

    The adapter's ``peft_type`` picks the vimw kind that maps it (``LORA``: a lora
    module). It must target only the encoder layers' attention output projections and
    MLP output linears (CLIP: ``self_attn.out_proj`` / ``mlp.fc2``), with options the
    kind represents exactly (lora: one rank and alpha, no bias and no DoRA; rsLoRA is
    stored as the equivalent vimw alpha); every tensor must fit ``backbone``. Returns
    the new module's manifest.
    """
    from vimw.modules import ModuleSet
    from vimw.zoo.manifest import ModuleManifest, check_module_name

    _peft()
    check_module_name(name)
    clip = _hf_backbone(backbone)
    adapter_dir = Path(adapter_dir).expanduser().resolve()
    where = str(adapter_dir / ADAPTER_CONFIG)
    raw, tensors = _read_adapter(adapter_dir)
    kind = _kind_for(raw, where)
    config = kind.peft.from_peft(raw, where)  # refuses what the kind cannot represent

    weights_file = adapter_dir / ADAPTER_WEIGHTS
    found = _site_tensors(tensors, kind, clip, weights_file)
    sites = [s.name for s in clip.sites if s.name in found]  # backbone order
    config = replace(config, sites=sites)
    module = ModuleSet.create(config, clip.sites)
    _check_shapes(found, module.state_dict(), config, weights_file)
    targeted = _config_sites(raw, clip, kind.name, where)
    if targeted != set(found):
        raise VimwError(
            f"{where}: the config targets {sorted(targeted)} but the weights cover {sorted(found)}; "
            "PEFT would not load this adapter as saved"
        )

    module.load_weights({f"{site}.{n}": found[site][n].float() for site in sites for n in kind.peft.weight_names})
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
        training={"imported_from": "peft", **kind.peft.import_record(raw)},
    )
    return zoo.add(manifest, module, overwrite=overwrite)


__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "export_peft_lora", "import_peft_lora"]

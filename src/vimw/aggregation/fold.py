"""Folding LoRA zoos into the backbone's weights, and exporting the folded model.

LoRA taps the input ``z`` of a site's final projection and adds ``s B A z`` to its
output. The gate-weighted sum over a zoo, ``sum_i g_i s_i B_i A_i z``, is linear in
``z``, so it is one dense ``out x inner`` matrix ``D`` per site that can be added to
the projection itself (LoRA's merge, Hu et al. 2021): the result is a *plain* backbone (no bypass), with
the same outputs in eval mode and exactly the backbone's cost.

- HF vision transformers (CLIP, ViT, DINOv2, SigLIP): the inner taps add to the
  attention output projection / the MLP's output linear, so ``W += D``.
- EfficientNet-Lite: the inner tap adds to ``BN2(project_conv(z))``. In eval mode
  ``BN2(y) = c * y + b`` per channel, so ``BN2(W z) + D z = BN2((W + D / c) z)``:
  the update is divided by BN2's scale and added to ``project_conv``. This keeps the
  architecture (and so the state-dict layout) of the backbone unchanged, so a folded
  state loads into ``create_backbone(arch, pretrained=False)``. It is exact up to
  float rounding (checked to 1e-5 in the tests); a BN channel with scale 0 is refused.

Every mode folds ``sum_i g_i s_i B_i A_i`` (for LoRA, ``merge`` computes exactly that).

Export (``vimw export``) writes the folded backbone state and the head to one
safetensors file whose metadata holds a JSON manifest (arch, image size,
preprocessing, class names, head config, the source model's sha256); a copy of the
manifest is written next to it as ``FILE.json`` for people. ``load_exported`` rebuilds
the model with no zoo and no bypass. What folds is what a module kind declares
(``foldable``, with ``delta_weight()`` as its fold rule: lora); other kinds (convpass,
adapter) are non-linear and cannot be folded: export refuses them with a ``VimwError``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from vimw.backbones.base import Backbone, Preprocess
from vimw.errors import FormatError, VimwError
from vimw.io.names import EXPORT_MANIFEST_SUFFIX
from vimw.io.names import FOLDED_EXPORT_FORMAT as EXPORT_FORMAT
from vimw.modules import ModuleSet
from vimw.modules.registry import lookup_module_kind, module_kinds_where

METADATA_KEY = "vimw_export"


# -- the per-site dense updates ---------------------------------------------------------
def lora_deltas(plugin: nn.Module) -> dict[str, torch.Tensor]:
    """The dense update ``D_s`` (``out x inner``) of every site of a LoRA plug-in.

    ``plugin`` is a ``ZooAggregate`` over LoRA modules or a single LoRA ``ModuleSet``.
    """
    from vimw.aggregation.aggregate import ZooAggregate

    if isinstance(plugin, ModuleSet):
        _require_foldable([plugin])
        with torch.no_grad():
            return {name: module.delta_weight().detach().clone() for name, module in plugin.items()}
    if isinstance(plugin, ZooAggregate):
        _require_foldable(list(plugin.experts))
        deltas: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            gates = plugin.gates()
            for row, site in enumerate(plugin.site_names):
                present = [(i, e[site]) for i, e in enumerate(plugin.experts) if site in e]
                weights = gates[row]
                # Every mode, merge included, is sum_i g_i s_i B_i A_i for LoRA (linear).
                terms = [weights[i] * m.delta_weight() for i, m in present if float(weights[i]) != 0.0]
                if terms:
                    deltas[site] = torch.stack(terms).sum(0)
        return deltas
    raise VimwError(
        f"only LoRA plug-ins (a lora zoo aggregate or a lora module) can be folded, got {type(plugin).__name__}"
    )


def _require_foldable(module_sets: list[ModuleSet]) -> None:
    """Refuse plug-ins with a module whose kind does not declare itself foldable."""
    kinds = sorted({m.kind for m in module_sets})
    refused = sorted({x.kind for s in module_sets for x in s.values() if not _foldable(x)})
    if refused:
        foldable = " or ".join(k.name for k in module_kinds_where(lambda k: k.foldable)) or "foldable"
        raise VimwError(
            f"only {foldable} modules can be folded into the backbone's weights; this model uses {kinds} "
            f"({', '.join(refused)} modules are non-linear: use mode 'topk' or 'merge' for cheap inference)"
        )


def _foldable(module: nn.Module) -> bool:
    entry = lookup_module_kind(getattr(module, "kind", ""))
    return entry is not None and entry.foldable and isinstance(module, entry.module_cls)


# -- folding into a backbone -----------------------------------------------------------
def fold_into_backbone(backbone: Backbone, deltas: dict[str, torch.Tensor]) -> Backbone:
    """A copy of ``backbone`` with each site's update added to its final projection."""
    folded = copy.deepcopy(backbone)
    folded._fingerprint = None  # the weights change
    with torch.no_grad():
        for name, delta in deltas.items():
            _add_to_projection(folded, folded.site(name), delta)
    return folded


def _add_to_projection(backbone: Backbone, site, delta: torch.Tensor) -> None:
    from vimw.backbones.efficientnet_lite import EfficientNetLite

    if isinstance(backbone, EfficientNetLite):
        block = backbone._blocks[site.block]
        conv, bn = block._project_conv, block._bn2
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        if bool((scale == 0).any()):
            raise VimwError(f"site {site.name}: BN2 has a zero scale; the LoRA update cannot be folded before it")
        conv.weight += (delta / scale[:, None]).to(conv.weight.dtype)[:, :, None, None]
        return
    from vimw.backbones.hf_vit import HFVisionBackbone  # imports transformers only when building one

    if isinstance(backbone, HFVisionBackbone):
        # CLIP, ViT, DINOv2, SigLIP: the inner tap adds to the attention output projection
        # resp. the MLP's output linear, before DINOv2's layer scale, so ``W += D`` is exact.
        proj = backbone.projection(site)
        proj.weight += delta.to(proj.weight.dtype)
        return
    raise VimwError(f"folding LoRA into backbone {backbone.arch} ({type(backbone).__name__}) is not supported")


def fold_lora(model):
    """A ``TaskModel`` with the LoRA plug-in folded into a copy of its backbone (no plug-in)."""
    from vimw.training import TaskModel

    if model.plugin is None:
        raise VimwError("the model has no plug-in to fold")
    backbone = fold_into_backbone(model.backbone, lora_deltas(model.plugin))
    folded = TaskModel(backbone, model.head_config)
    folded.head.load_state_dict(model.head.state_dict())
    return folded.eval()


# -- export -------------------------------------------------------------------------------
def check_export_target(out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """``out`` as the file an export may write (with its ``OUT.json`` manifest), checked before any work:
    a directory is refused, and an existing file unless ``overwrite``."""
    out = Path(out)
    manifest = Path(str(out) + EXPORT_MANIFEST_SUFFIX)
    if out.is_dir():
        raise VimwError(f"--out {out} is a directory; an export is one file (e.g. {out / 'model.onnx'})")
    if out.parent.exists() and not out.parent.is_dir():
        raise VimwError(f"--out {out}: {out.parent} is a file, not a directory")
    taken = [str(p) for p in (out, manifest) if p.exists()]
    if taken and not overwrite:
        raise VimwError(f"{' and '.join(taken)} already exist{'s' if len(taken) == 1 else ''}; pass --overwrite to "
                        "replace, or choose another --out")
    if manifest.is_dir():
        raise VimwError(f"{manifest} is a directory; the export's manifest goes there")
    return out


def export_folded(model_dir: str | os.PathLike, out: str | os.PathLike, *, zoo_dir: str | os.PathLike | None = None,
                  overwrite: bool = False) -> dict:
    """Fold a saved LoRA downstream model and write it as one safetensors file (``OUT.json``
    beside it); an existing ``out`` is replaced only with ``overwrite``."""
    from vimw.aggregation.store import load_downstream, source_record
    from vimw.io import save_tensors, write_json

    check_export_target(out, overwrite=overwrite)
    model_dir = Path(model_dir)
    model, manifest = load_downstream(model_dir, zoo_dir=zoo_dir)
    folded = fold_lora(model)  # refuses non-lora zoos with a VimwError
    backbone = folded.backbone
    payload = {
        "format": EXPORT_FORMAT,
        "kind": "folded_lora",
        "arch": backbone.arch,
        "image_size": backbone.preprocess.size,
        "preprocess": {"size": backbone.preprocess.size, "mean": list(backbone.preprocess.mean),
                       "std": list(backbone.preprocess.std)},
        "backbone_config": _backbone_config(backbone),
        "head": model.head_config.to_dict(),
        "class_names": manifest.get("class_names"),
        "task": manifest.get("task"),
        "source_model": source_record(model_dir, manifest),
    }
    tensors = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in folded.head.state_dict().items()})
    digest = save_tensors(out, tensors, metadata={METADATA_KEY: json.dumps(payload)})
    payload["sha256"] = digest
    write_json(Path(str(out) + EXPORT_MANIFEST_SUFFIX), payload)
    return payload


def _backbone_config(backbone: Backbone) -> dict | None:
    tower = getattr(backbone, "tower", None)
    if tower is None:
        return None
    return {"vision_config": tower.config.to_dict(), "family": backbone.family.name,
            "has_projection": getattr(backbone, "visual_projection", None) is not None}


def read_export_manifest(path: str | os.PathLike) -> dict:
    """The metadata of a folded export file, checked for a format this vimw reads."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except FileNotFoundError as exc:
        raise FormatError(f"{path}: exported model file is missing") from exc
    except Exception as exc:
        raise FormatError(f"{path}: not a valid safetensors file ({exc})") from exc
    if METADATA_KEY not in metadata:
        raise FormatError(f"{path}: not a vimw exported model (no {METADATA_KEY!r} metadata)")
    payload = json.loads(metadata[METADATA_KEY])
    if payload.get("format", 0) > EXPORT_FORMAT:
        raise FormatError(f"{path}: export format {payload['format']} is newer than this vimw supports")
    return payload


def load_exported(path: str | os.PathLike):
    """Rebuild an exported model: ``(TaskModel with no plug-in, manifest)``, in eval mode."""
    from vimw.backbones import create_backbone
    from vimw.io import load_tensors
    from vimw.training import HeadConfig, TaskModel

    payload = read_export_manifest(path)
    tensors = load_tensors(path)
    arch = payload["arch"]
    if payload.get("backbone_config"):
        from vimw.backbones.hf_vit import backbone_from_config

        backbone = backbone_from_config(arch, payload["backbone_config"])
    else:
        backbone = create_backbone(arch, image_size=payload["image_size"], pretrained=False)
    pre = payload["preprocess"]
    backbone.preprocess = Preprocess(int(pre["size"]), tuple(pre["mean"]), tuple(pre["std"]))
    state = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FormatError(f"{path}: backbone weights do not match {arch} ({exc})") from exc
    backbone._fingerprint = None
    model = TaskModel(backbone, HeadConfig.from_dict(payload["head"]))
    try:
        model.head.load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
    except RuntimeError as exc:
        raise FormatError(f"{path}: head weights do not match the head config ({exc})") from exc
    return model.eval(), payload


__all__ = ["check_export_target", "export_folded", "fold_into_backbone", "fold_lora", "load_exported", "lora_deltas", "read_export_manifest"]

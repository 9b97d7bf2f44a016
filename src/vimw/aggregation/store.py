"""A downstream model on disk: gates + head in safetensors, a manifest naming the zoo modules.

::

    MODEL_DIR/
      model.safetensors   gate_logits and site_log_scale (aggregation), module.* (a new module,
                          alone or on top of the zoo) and head.* tensors
      manifest.json       format, method, backbone (arch, fingerprint, image size),
                          zoo (path, modules: name + sha256), head config, task,
                          class names, metrics, settings
      gates.png           the learned gates, sites x modules (when plotted)

Loading refuses a model whose zoo modules changed or disappeared, naming them, and a
backbone whose fingerprint differs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from vimw.aggregation.aggregate import ZooAggregate
from vimw.aggregation.residual import ZooResidual
from vimw.backbones import Backbone, create_backbone
from vimw.errors import BackboneMismatchError, FormatError, IntegrityError, VimwError
from vimw.io import load_tensors, read_json, save_tensors, sha256_file, write_json
from vimw.io.names import MANIFEST_FILE, MODEL_FORMAT
from vimw.io.names import MODEL_WEIGHTS_FILE as TENSORS_FILE
from vimw.training import HeadConfig, TaskModel
from vimw.version import __version__
from vimw.zoo import Zoo


def save_downstream(directory: str | os.PathLike, model: TaskModel, manifest: dict) -> dict:
    """Write the trainable downstream state (gates, head; a scratch module if any)."""
    directory = Path(directory)
    tensors = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    plugin = model.plugin
    zoo_part, module_part = (plugin.zoo, plugin.module) if isinstance(plugin, ZooResidual) else \
        (plugin, None) if isinstance(plugin, ZooAggregate) else (None, plugin)
    if zoo_part is not None:
        tensors["gate_logits"] = zoo_part.gate_logits.detach()
        if getattr(zoo_part, "log_scale", None) is not None:  # fitted per-site scales (aggregation.gatefit)
            tensors["site_log_scale"] = zoo_part.log_scale.detach()
    if module_part is not None:
        tensors.update({f"module.{k}": v for k, v in module_part.state_dict().items()})
    digest = save_tensors(directory / TENSORS_FILE, tensors)
    payload = {
        **manifest,
        "format": MODEL_FORMAT,
        "vimw_version": __version__,
        "head": model.head_config.to_dict(),
        "weights": {"file": TENSORS_FILE, "sha256": digest},
        "backbone": model.backbone.record().to_dict(),
    }
    write_json(directory / MANIFEST_FILE, payload)
    return payload


def source_record(directory: str | os.PathLike, manifest: dict) -> dict:
    """What an export records about the saved model it came from: path, checksums, backbone, zoo."""
    directory = Path(directory)
    return {
        "path": str(directory.resolve()),
        "weights_sha256": manifest["weights"]["sha256"],
        "manifest_sha256": sha256_file(directory / MANIFEST_FILE),
        "backbone_fingerprint": manifest["backbone"]["fingerprint"],
        "aggregation": manifest.get("aggregation"),
        "zoo_modules": (manifest.get("zoo") or {}).get("modules"),
    }


def read_manifest(directory: str | os.PathLike) -> dict:
    """A downstream model's manifest.json, checked for its format version and required keys."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if directory.exists() and not directory.is_dir():
        raise VimwError(f"{directory} is a file; a downstream model is a directory (made by 'vimw aggregate')")
    if not directory.is_dir():
        raise VimwError(f"no downstream model at {directory}: the directory does not exist")
    if not path.is_file():
        raise VimwError(f"{directory} is not a downstream model directory (no {MANIFEST_FILE})")
    manifest = read_json(path)
    for key in ("format", "method", "backbone", "head", "weights"):
        if key not in manifest:
            raise FormatError(f"{path}: missing required key {key!r}")
    version = manifest["format"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FormatError(f"{path}: invalid format version {version!r}")
    if version > MODEL_FORMAT:
        raise FormatError(f"{path}: format {version} is newer than this vimw supports ({MODEL_FORMAT})")
    for key in ("backbone", "head", "weights"):
        if not isinstance(manifest[key], dict):
            raise FormatError(f"{path}: {key!r} must be an object, found {type(manifest[key]).__name__}")
    if not isinstance(manifest["backbone"].get("arch"), str) or not isinstance(manifest["backbone"].get("fingerprint"), str):
        raise FormatError(f"{path}: 'backbone' needs string 'arch' and 'fingerprint'")
    if not isinstance(manifest["weights"].get("sha256"), str):
        raise FormatError(f"{path}: 'weights' needs a string 'sha256'")
    zoo = manifest.get("zoo")
    if zoo:
        modules = zoo.get("modules") if isinstance(zoo, dict) else None
        if (
            not isinstance(zoo.get("path") if isinstance(zoo, dict) else None, str)
            or not isinstance(modules, list)
            or not modules
            or not all(isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("sha256"), str)
                       for m in modules)
        ):
            raise FormatError(f"{path}: 'zoo' needs a 'path' and a non-empty list of modules with 'name' and 'sha256'")
        if not isinstance(manifest.get("aggregation"), dict) or not isinstance(manifest["aggregation"].get("mode"), str):
            raise FormatError(f"{path}: a zoo model needs an 'aggregation' object with a 'mode'")
    return manifest


def check_zoo_modules(zoo: Zoo, recorded: list[dict], backbone: dict | None = None) -> None:
    """Refuse when any module the model uses is gone or its weights changed, and first when
    the zoo's modules are for another backbone than the model's (``backbone``: its record)."""
    index = zoo.read_index()
    if backbone is not None:
        _check_zoo_backbone(zoo, index, recorded, backbone)
    missing = [m["name"] for m in recorded if m["name"] not in index]
    changed = [m["name"] for m in recorded if m["name"] in index and index[m["name"]].get("sha256") != m["sha256"]]
    if missing or changed:
        parts = []
        if missing:
            parts.append(f"missing from the zoo: {missing}")
        if changed:
            parts.append(f"changed since the model was trained (sha256 differs): {changed}")
        raise IntegrityError(f"the downstream model cannot use the zoo {zoo.root}: " + "; ".join(parts))


def _check_zoo_backbone(zoo: Zoo, index: dict, recorded: list[dict], backbone: dict) -> None:
    """A zoo of another backbone holds modules of the same names with other weights: say so,
    naming both backbones, rather than that the modules changed."""
    foreign = {m["name"]: index[m["name"]] for m in recorded
               if m["name"] in index and index[m["name"]].get("fingerprint") not in (None, backbone["fingerprint"])}
    if foreign:
        theirs = sorted({f"{e.get('backbone')} (fingerprint {str(e.get('fingerprint'))[:12]})" for e in foreign.values()})
        raise BackboneMismatchError(
            f"backbone mismatch: the model was trained on {backbone['arch']} (fingerprint "
            f"{backbone['fingerprint'][:12]}), but the zoo {zoo.root} holds {sorted(foreign)} for {', '.join(theirs)}; "
            "give the zoo the model was trained with (--zoo)")


def zoo_for_model(manifest: dict, zoo_dir: str | os.PathLike | None) -> Zoo:
    """The zoo a saved model's modules are read from: ``zoo_dir``, else the path it recorded."""
    root = Path(zoo_dir or manifest["zoo"]["path"])
    if root.exists() and not root.is_dir():
        raise VimwError(f"{root} is a file; a zoo is a directory")
    if not root.is_dir():
        moved = "" if zoo_dir else " (the model records this path; pass --zoo if the zoo moved)"
        raise VimwError(f"no zoo at {root}: the directory does not exist{moved}")
    return Zoo(root)


def _cached_module(zoo: Zoo, recorded: dict, backbone: Backbone, cache: dict | None):
    """Zoo module ``recorded["name"]``, from ``cache`` when there (then stored there), keyed by
    its weights' sha256, its config and the backbone: equal keys are equal modules."""
    if cache is None:
        return zoo.load(recorded["name"], backbone)
    config = json.dumps(zoo.manifest(recorded["name"]).module, sort_keys=True)
    key = (recorded["sha256"], config, backbone.fingerprint())
    module = cache.get(key)  # a local reference first: the cache may hold modules weakly
    if module is None:
        module = cache[key] = zoo.load(recorded["name"], backbone)
    return module


def load_downstream(
    directory: str | os.PathLike, *, zoo_dir: str | os.PathLike | None = None, backbone: Backbone | None = None,
    module_cache: dict | None = None,
) -> tuple[TaskModel, dict]:
    """Rebuild a saved downstream model (backbone, plug-in, head) ready for inference.

    ``module_cache`` (a dict, filled as modules load) lets models from one zoo share their
    frozen modules: a server holding many models keeps one copy of each distinct module.
    """
    from vimw.modules import ModuleSet, config_from_dict

    directory = Path(directory)
    manifest = read_manifest(directory)
    recorded = manifest["backbone"]
    if backbone is None:
        source = recorded.get("source")
        backbone = create_backbone(source if isinstance(source, str) and source else recorded["arch"],
                                   image_size=recorded.get("image_size"))
    if backbone.fingerprint() != recorded["fingerprint"]:
        raise BackboneMismatchError(
            f"{directory}: the model was trained on {recorded['arch']} (fingerprint {recorded['fingerprint'][:12]}), "
            f"not on {backbone.arch} (fingerprint {backbone.fingerprint()[:12]})"
        )
    tensors = load_tensors(directory / TENSORS_FILE, expected_sha256=manifest["weights"]["sha256"])
    plugin = None
    if manifest.get("zoo"):
        zoo = zoo_for_model(manifest, zoo_dir)
        modules = manifest["zoo"]["modules"]
        check_zoo_modules(zoo, modules, recorded)
        names = [m["name"] for m in modules]
        agg = manifest["aggregation"]
        if agg.get("site_scale"):
            from vimw.aggregation.gatefit import ScaledZooAggregate as aggregate_class
        else:
            aggregate_class = ZooAggregate
        experts = [_cached_module(zoo, m, backbone, module_cache) for m in modules]
        plugin = aggregate_class(experts, names, backbone, mode=agg["mode"],
                              top_k=agg.get("top_k", 2), single_index=agg.get("single_index"))
        gates = tensors.get("gate_logits")
        if gates is None or tuple(gates.shape) != tuple(plugin.gate_logits.shape):
            raise FormatError(
                f"{directory / TENSORS_FILE}: 'gate_logits' is {'missing' if gates is None else tuple(gates.shape)}, "
                f"the model needs {tuple(plugin.gate_logits.shape)} (sites x modules)"
            )
        with torch.no_grad():
            plugin.gate_logits.copy_(gates)
        if agg.get("site_scale"):
            scale = tensors.get("site_log_scale")
            if scale is None or tuple(scale.shape) != tuple(plugin.log_scale.shape):
                raise FormatError(f"{directory / TENSORS_FILE}: 'site_log_scale' is missing or has the wrong shape")
            with torch.no_grad():
                plugin.log_scale.copy_(scale)
    if manifest.get("module"):  # a new module: alone, or on top of the frozen zoo (ZooResidual)
        module = ModuleSet.create(config_from_dict(manifest["module"]), backbone.sites)
        module.load_weights({k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")})
        plugin = module if plugin is None else ZooResidual(plugin, module)
    model = TaskModel(backbone, HeadConfig.from_dict(manifest["head"]), plugin=plugin)
    head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    try:
        model.head.load_state_dict(head)
    except RuntimeError as exc:
        raise FormatError(f"{directory}: head weights do not match the head config ({exc})") from exc
    return model.eval(), manifest

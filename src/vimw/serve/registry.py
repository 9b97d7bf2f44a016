"""The models a server holds: one frozen backbone, many downstream models, shared zoo modules.

Every model is loaded onto the one backbone (its fingerprint and image size are checked
before anything else is read) through ``load_downstream``, from safetensors and JSON
only. Zoo modules are shared between models by weights sha256 and config: memory grows
with the distinct modules, not with the models. Adding or removing a model touches no
other model; a request that already holds a model keeps it until it is answered.

A model whose plug-in is LoRA may instead run on its own copy of the backbone with the
plug-in folded into the weights (``fold``): ``"auto"`` keeps the copy only where it
measures faster than the shared pass at load time, and :meth:`ServedModel.describe`
says which path each model takes.

Every model lives on the registry's device (``cpu``, ``cuda``, ``cuda:N``): the shared
backbone, the zoo modules, the heads and the folded copies alike.
"""

from __future__ import annotations

import os
import re
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from vimw.aggregation import load_downstream
from vimw.aggregation.store import read_manifest
from vimw.backbones import Backbone
from vimw.errors import BackboneMismatchError, VimwError
from vimw.io.names import MANIFEST_FILE
from vimw.serve.defaults import DEFAULT_DEVICE, FOLD_POLICIES
from vimw.serve.device import resolve_device, synchronize
from vimw.serve.mixed import SharedSite, shared_sites, tap_of
from vimw.training import TaskModel
from vimw.workflows.predict import Predictor, model_predictor

PROBE_IMAGES = 8  # batch size of the load-time timing that chooses a LoRA model's path
PROBE_REPEATS = 3
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # one URL path segment


class UnknownModelError(VimwError, LookupError):
    """No model of that name is loaded."""


class NameTakenError(VimwError):
    """A model of that name is already loaded."""


@dataclass
class ServedModel:
    """One loaded downstream model: on the shared backbone, or on its own folded copy."""

    name: str
    directory: Path
    model: TaskModel
    manifest: dict
    predictor: Predictor
    folded: TaskModel | None = None  # its own backbone with the LoRA plug-in folded in
    timing_ms: dict | None = None  # the load-time measurement behind the choice
    shared: dict[str, SharedSite] | None = None  # sites whose hidden pass it shares with other models
    device: torch.device = torch.device("cpu")  # where its backbone, plug-in and head run

    @property
    def path(self) -> str:
        return "folded" if self.folded is not None else "shared"

    @property
    def tap(self) -> str | None:
        """Which backbone pass the model joins (``None``: no plug-in, any pass)."""
        return tap_of(self.model.bypass())

    def describe(self) -> dict:
        """What ``GET /v1/models`` says about the model."""
        backbone = self.manifest["backbone"]
        zoo = self.manifest.get("zoo") or {}
        aggregation = self.manifest.get("aggregation") or {}
        return {
            "name": self.name,
            "directory": str(self.directory),
            "task": self.manifest.get("task"),
            "classes": list(self.predictor.class_names),
            "method": self.manifest.get("method"),
            "aggregation": aggregation.get("mode"),
            "zoo_modules": [m["name"] for m in zoo.get("modules", [])],
            "backbone": {k: backbone.get(k) for k in ("arch", "fingerprint", "image_size")},
            "path": self.path,
            "device": str(self.device),
            "path_note": _path_note(self),
            "shared_hidden_sites": len(self.shared or {}),
            "timing_ms": self.timing_ms,
        }


def _path_note(served: ServedModel) -> str:
    if served.folded is not None:
        return "own backbone copy with its LoRA plug-in folded into the weights (one pass of its own)"
    if served.model.plugin is None:
        return "shared batched pass, head only (no plug-in)"
    if served.shared:
        return (f"shared batched pass ({served.tap} tap); at {len(served.shared)} sites its zoo modules' hidden "
                "pass runs once with other models' rows, then its own gate-scaled projection")
    return f"shared batched pass, its plug-in on its own rows ({served.tap} tap)"


def check_name(name: str) -> str:
    """``name`` if it can be a model's name in a URL, else a clear error."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise VimwError(f"model name {name!r} must be 1-128 letters, digits, '.', '_' or '-' (not starting with . _ -)")
    return name


def check_backbone(directory: Path, backbone: Backbone | None) -> dict:
    """The model's manifest, once its backbone is known to be ``backbone`` (fingerprint and image size)."""
    if not (directory / MANIFEST_FILE).is_file():
        raise VimwError(f"{directory} is not a downstream model directory (no {MANIFEST_FILE}; "
                        "make one with 'vimw aggregate')")
    manifest = read_manifest(directory)
    recorded = manifest["backbone"]
    if backbone is not None:
        record = backbone.record()
        if recorded["fingerprint"] != record.fingerprint or recorded.get("image_size") != record.image_size:
            raise BackboneMismatchError(
                f"{directory}: the model was trained on {recorded['arch']} at {recorded.get('image_size')} px "
                f"(fingerprint {recorded['fingerprint'][:12]}); this server holds {record.arch} at "
                f"{record.image_size} px (fingerprint {record.fingerprint[:12]})")
    return manifest


def check_fold(fold: str) -> str:
    if fold not in FOLD_POLICIES:
        raise VimwError(f"fold must be one of {FOLD_POLICIES}, got {fold!r}")
    return fold


def _forward_ms(model: TaskModel, pixels: torch.Tensor) -> float:
    """Best of a few timed forward passes, after one warm-up, in milliseconds."""
    with torch.inference_mode():
        model(pixels)
        best = float("inf")
        for _ in range(PROBE_REPEATS):
            synchronize(pixels.device)
            started = time.perf_counter()
            model(pixels)
            synchronize(pixels.device)
            best = min(best, time.perf_counter() - started)
    return best * 1e3


def choose_path(model: TaskModel, fold: str, device: torch.device = torch.device("cpu")
                ) -> tuple[TaskModel | None, dict | None]:
    """The folded copy the model should run on (``None``: the shared pass) and the timing behind it;
    ``model`` is on ``device`` already, the copy is put there too."""
    from vimw.aggregation.fold import fold_lora

    if check_fold(fold) == "never" or model.plugin is None:
        return None, None
    try:
        folded = fold_lora(model).to(device)  # its new head is built on the CPU
    except VimwError:  # not LoRA: non-linear plug-ins cannot fold
        return None, None
    if fold == "always":
        return folded, None
    size = model.backbone.preprocess.size
    pixels = model.backbone.preprocess(torch.rand(PROBE_IMAGES, 3, size, size, device=device))
    timing = {"shared": round(_forward_ms(model, pixels), 3), "folded": round(_forward_ms(folded, pixels), 3),
              "images": PROBE_IMAGES}
    return (folded if timing["folded"] < timing["shared"] else None), timing


class ModelRegistry:
    """The loaded models by name, on one shared backbone (set by the first model unless given), on ``device``."""

    def __init__(self, backbone: Backbone | None = None, *, fold: str = "auto", device: str = DEFAULT_DEVICE) -> None:
        self.device = resolve_device(device)  # first: a missing GPU is refused before anything loads
        self.backbone = backbone.to(self.device) if backbone is not None else None
        self.fold = check_fold(fold)
        self._models: dict[str, ServedModel] = {}
        # Loaded zoo modules and their stacked runners, held weakly: what no model uses any more is freed.
        self._modules: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._runners: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._lock = threading.Lock()  # the name -> model table
        self._loading = threading.Lock()  # one load at a time (the shared backbone and module cache)

    def load(self, directory: str | os.PathLike, name: str | None = None,
             zoo: str | os.PathLike | None = None) -> ServedModel:
        """Load a saved downstream model under ``name`` (default: its directory's name)."""
        directory = Path(directory).expanduser().resolve()
        name = check_name(name if name is not None else directory.name)
        if name in self._models:
            raise NameTakenError(f"a model named {name!r} is already loaded; remove it first or pick another name")
        with self._loading:
            manifest = check_backbone(directory, self.backbone)
            model, manifest = load_downstream(directory, zoo_dir=zoo, backbone=self.backbone,
                                              module_cache=self._modules)
            predictor = model_predictor(model, manifest, str(directory))  # refuses dense models
            model.to(self.device)  # the shared backbone and cached modules are there already after the first
            folded, timing = choose_path(model, self.fold, self.device)
            shared = shared_sites(model.plugin, self._runners) if folded is None else {}
            served = ServedModel(name, directory, model, manifest, predictor, folded, timing, shared, self.device)
            with self._lock:
                if name in self._models:
                    raise NameTakenError(f"a model named {name!r} is already loaded")
                self._models[name] = served
                if self.backbone is None:
                    self.backbone = model.backbone
        return served

    def remove(self, name: str) -> ServedModel:
        """Unload model ``name``; requests already holding it are still answered."""
        with self._lock:
            if name not in self._models:
                raise UnknownModelError(f"no model named {name!r} is loaded")
            return self._models.pop(name)

    def get(self, name: str) -> ServedModel:
        served = self._models.get(name)
        if served is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise UnknownModelError(f"no model named {name!r} is loaded (loaded: {known})")
        return served

    def __len__(self) -> int:
        return len(self._models)

    def describe(self) -> dict:
        """The backbone and every model, for ``GET /v1/models``."""
        with self._lock:
            models = list(self._models.values())
        backbone = self.backbone.record().to_dict() if self.backbone is not None else None
        return {"backbone": backbone, "device": str(self.device), "zoo_modules_in_memory": len(self._modules),
                "models": [m.describe() for m in models]}


__all__ = ["ModelRegistry", "NameTakenError", "ServedModel", "UnknownModelError",
           "check_backbone", "check_name", "choose_path"]

"""The zoo on disk: a directory anyone can copy, share or put under version control.

::

    ZOO/
      index.json                 {"format": 1, "modules": {name: summary}}  (fast listing)
      .lock                      advisory lock taken by writers of the index
      modules/<name>/
        module.safetensors       the module's weights (tensors only)
        manifest.json            kind + config, backbone fingerprint, task, metrics, sha256...
        head.safetensors         optional: the midstream head, for inspection
      .staging/                  where a new module is written before it appears

Adding a module writes it completely under ``.staging``, then renames the directory
into ``modules/`` and updates the index under the lock: readers never see half a
module, and no other module's files are touched. Loading checks the sha256 of the
weights and the backbone fingerprint before anything is plugged in.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from vimw.backbones.base import Backbone
from vimw.errors import BackboneMismatchError, FormatError, IntegrityError, VimwError
from vimw.io import file_lock, load_tensors, read_json, save_tensors, sha256_file, write_json
from vimw.modules import ModuleSet, config_from_dict
from vimw.zoo.manifest import ModuleManifest, check_module_name

INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
MODULES_DIR = "modules"
STAGING_DIR = ".staging"
WEIGHTS_FILE = "module.safetensors"
MANIFEST_FILE = "manifest.json"
HEAD_FILE = "head.safetensors"
INDEX_FORMAT = 1


class ZooError(VimwError):
    """A zoo operation cannot be done (name taken, module missing...)."""


class Zoo:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # -- paths -------------------------------------------------------------------------
    def module_dir(self, name: str) -> Path:
        return self.root / MODULES_DIR / check_module_name(name)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with file_lock(self.root / LOCK_FILE):
            yield

    # -- the index ---------------------------------------------------------------------
    def read_index(self) -> dict[str, dict]:
        path = self.root / INDEX_FILE
        if not path.exists():
            if self.root.exists() and not self.root.is_dir():
                raise ZooError(f"{self.root} is not a directory")
            return {}
        payload = read_json(path)
        if payload.get("format") != INDEX_FORMAT or not isinstance(payload.get("modules"), dict):
            raise FormatError(f"{path}: not a vimw zoo index (format {payload.get('format')!r})")
        return payload["modules"]

    def _write_index(self, modules: dict[str, dict]) -> None:
        write_json(self.root / INDEX_FILE, {"format": INDEX_FORMAT, "modules": modules})

    def names(self) -> list[str]:
        return sorted(self.read_index())

    def __contains__(self, name: str) -> bool:
        return name in self.read_index()

    def __len__(self) -> int:
        return len(self.read_index())

    def list(self, kind: str | None = None, task: str | None = None, backbone: str | None = None) -> list[tuple[str, dict]]:
        """Index entries, optionally filtered; reads ``index.json`` only."""
        rows = []
        for name, entry in sorted(self.read_index().items()):
            if kind and entry.get("kind") != kind:
                continue
            if task and task not in str(entry.get("task")):
                continue
            if backbone and entry.get("backbone") != backbone:
                continue
            rows.append((name, entry))
        return rows

    # -- writing -----------------------------------------------------------------------
    def add(
        self,
        manifest: ModuleManifest,
        module: ModuleSet,
        head_state: dict[str, torch.Tensor] | None = None,
        *,
        overwrite: bool = False,
    ) -> ModuleManifest:
        """Write one module and its index entry; never touches another module's files."""
        name = check_module_name(manifest.name)
        staging = self.root / STAGING_DIR / f"{name}.{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            manifest.weights = {"file": WEIGHTS_FILE, "sha256": save_tensors(staging / WEIGHTS_FILE, module.state_dict())}
            manifest.num_parameters = module.num_parameters()
            if head_state:
                manifest.head = {**manifest.head, "file": HEAD_FILE, "sha256": save_tensors(staging / HEAD_FILE, head_state)}
            write_json(staging / MANIFEST_FILE, manifest.to_dict())
            with self._locked():
                index = self.read_index()
                target = self.module_dir(name)
                if (name in index or target.exists()) and not overwrite:
                    raise ZooError(f"the zoo {self.root} already has a module named {name!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    self._discard(target)
                os.replace(staging, target)
                index[name] = manifest.index_entry()
                self._write_index(index)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return manifest

    def _discard(self, directory: Path) -> None:
        # Rename first so a crash mid-delete never leaves a half-deleted module in place.
        trash = self.root / STAGING_DIR / f"trash.{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(directory, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def remove(self, name: str) -> None:
        with self._locked():
            index = self.read_index()
            if name not in index:
                raise ZooError(f"no module named {name!r} in the zoo {self.root}")
            del index[name]
            self._write_index(index)
            target = self.module_dir(name)
            if target.exists():
                self._discard(target)

    # -- reading -----------------------------------------------------------------------
    def manifest(self, name: str) -> ModuleManifest:
        directory = self.module_dir(name)
        if name not in self.read_index() or not directory.is_dir():
            raise ZooError(f"no module named {name!r} in the zoo {self.root}")
        path = directory / MANIFEST_FILE
        return ModuleManifest.from_dict(read_json(path), where=str(path))

    def load(self, name: str, backbone: Backbone) -> ModuleSet:
        """Build the module for ``backbone``: fingerprint checked first, then the sha256."""
        manifest = self.manifest(name)
        check_backbone(manifest, backbone)
        config = config_from_dict(manifest.module)
        module = ModuleSet.create(config, backbone.sites)
        tensors = load_tensors(self.module_dir(name) / WEIGHTS_FILE, expected_sha256=manifest.weights["sha256"])
        module.load_weights(tensors)
        return module

    def load_head(self, name: str) -> dict[str, torch.Tensor]:
        manifest = self.manifest(name)
        if not manifest.head.get("file"):
            raise ZooError(f"module {name!r} was saved without its head")
        return load_tensors(self.module_dir(name) / HEAD_FILE, expected_sha256=manifest.head["sha256"])

    # -- checking ----------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Every problem found, one sentence each; an empty list means the zoo is sound."""
        problems: list[str] = []
        try:
            index = self.read_index()
        except FormatError as exc:
            return [str(exc)]
        for name, entry in sorted(index.items()):
            directory = self.module_dir(name)
            if not directory.is_dir():
                problems.append(f"{name}: listed in the index but {directory} is missing")
                continue
            try:
                manifest = ModuleManifest.from_dict(read_json(directory / MANIFEST_FILE), where=str(directory / MANIFEST_FILE))
                config_from_dict(manifest.module)
            except VimwError as exc:
                problems.append(f"{name}: {exc}")
                continue
            for label, record, filename in (
                ("weights", manifest.weights, WEIGHTS_FILE),
                ("head", manifest.head, HEAD_FILE),
            ):
                if label == "head" and not record.get("file"):
                    continue
                path = directory / filename
                if not path.is_file():
                    problems.append(f"{name}: {label} file {path} is missing")
                elif sha256_file(path) != record.get("sha256"):
                    problems.append(
                        f"{name}: {label} file {path} does not match its recorded sha256 (modified or corrupted)"
                    )
            if entry.get("sha256") != manifest.weights.get("sha256"):
                problems.append(f"{name}: the index and the manifest record different sha256 values")
        modules_root = self.root / MODULES_DIR
        if modules_root.is_dir():
            for directory in sorted(modules_root.iterdir()):
                if directory.name not in index:
                    problems.append(f"{directory.name}: {directory} is not in the index (left by an interrupted write?)")
        return problems


def check_backbone(manifest: ModuleManifest, backbone: Backbone) -> None:
    if manifest.fingerprint != backbone.fingerprint():
        raise BackboneMismatchError(
            f"module {manifest.name!r} was trained on backbone {manifest.backbone.get('arch')!r} "
            f"(fingerprint {manifest.fingerprint[:12]}), but it is being loaded into {backbone.arch!r} "
            f"(fingerprint {backbone.fingerprint()[:12]}); a module only works on the backbone it was trained on"
        )


def verify_or_raise(zoo: Zoo) -> None:
    problems = zoo.verify()
    if problems:
        raise IntegrityError(f"zoo {zoo.root} failed verification:\n  " + "\n  ".join(problems))

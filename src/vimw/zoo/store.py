"""The zoo on disk: a directory anyone can copy, share or put under version control.

::

    ZOO/
      index.json                 {"format": 1, "modules": {name: summary}}  (fast listing)
      .lock                      advisory lock taken by writers of the index
      modules/<name>/
        module.safetensors       the module's weights (tensors only)
        manifest.json            kind + config, backbone fingerprint, task, metrics, sha256...
        README.md                the module card, generated from the manifest
        head.safetensors         optional: the midstream head, for inspection
      .staging/<name>.<id>/      a module being written, before it appears
      .staging/<name>.<id>.owner locked by the writing process while it lives
      .trash/<name>.<id>/        a replaced or removed module on its way out

Adding a module writes it completely under ``.staging``, then, under the lock, renames
the directory into ``modules/`` and rewrites the index (atomically): readers never see
half a module, ``list()`` (the index) never shows a module whose files are incomplete,
and no other module's files are touched. Loading checks the sha256 of the weights and
the backbone fingerprint before anything is plugged in.

A writer killed at any point leaves the old state or the new one, plus at most some
garbage that ``repair()`` (``vimw zoo verify --repair``) clears: a dead writer's staging
directory, temporary files, a module directory renamed into place whose index update
never happened (re-indexed if it verifies, else removed), or a replaced module's old
copy (restored if the index still points at it).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from vimw.backbones.base import Backbone
from vimw.errors import BackboneMismatchError, FormatError, IntegrityError, VimwError
from vimw.io import (
    atomic_write_text,
    dumps_json,
    file_lock,
    fsync_dir,
    is_temporary,
    load_tensors,
    lock_is_held,
    read_json,
    save_tensors,
    sha256_file,
    write_json,
)
from vimw.io.names import MANIFEST_FILE
from vimw.io.names import MODULE_HEAD_FILE as HEAD_FILE
from vimw.io.names import MODULE_WEIGHTS_FILE as WEIGHTS_FILE
from vimw.io.names import TRAINING_LOG_FILE as LOG_FILE
from vimw.io.names import ZOO_INDEX_FILE as INDEX_FILE
from vimw.io.names import ZOO_LOCK_FILE as LOCK_FILE
from vimw.io.names import ZOO_MODULES_DIR as MODULES_DIR
from vimw.io.names import ZOO_STAGING_DIR as STAGING_DIR
from vimw.io.names import ZOO_TRASH_DIR as TRASH_DIR
from vimw.modules import ModuleSet, config_from_dict
from vimw.zoo.index import ZooError, read_index, select, write_index
from vimw.io.names import MODULE_CARD_FILE as CARD_FILE
from vimw.zoo.card import module_card
from vimw.zoo.manifest import ModuleManifest, check_module_name

OWNER_SUFFIX = ".owner"


def _check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ZooError(f"{what}: tensor {key!r} contains NaN or infinite values; refusing to store a broken module")


class Zoo:
    """A module zoo on disk: add, list, load, verify and repair modules trained on one backbone."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # -- paths -------------------------------------------------------------------------
    def module_dir(self, name: str) -> Path:
        """The directory of module ``name`` (the name is checked first)."""
        return self.root / MODULES_DIR / check_module_name(name)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with file_lock(self.root / LOCK_FILE):
            yield

    @contextmanager
    def _staging(self, name: str) -> Iterator[Path]:
        """A fresh staging directory, with ``<dir>.owner`` locked while this process lives.

        Both are created under the zoo lock, so ``repair`` (which holds it) never sees a
        staging directory whose owner lock is not taken yet; the kernel drops the owner
        lock when the process dies, which is how ``repair`` tells garbage from work.
        """
        staging = self.root / STAGING_DIR / f"{name}.{uuid.uuid4().hex}"
        owner = staging.with_name(staging.name + OWNER_SUFFIX)
        with self._locked():
            staging.parent.mkdir(parents=True, exist_ok=True)
            handle = open(owner, "a+b")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                staging.mkdir()
            except BaseException:
                owner.unlink(missing_ok=True)
                handle.close()
                raise
        try:
            yield staging
        finally:
            try:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
                owner.unlink(missing_ok=True)
            finally:
                handle.close()

    # -- the index ---------------------------------------------------------------------
    def read_index(self) -> dict[str, dict]:
        """Module name -> index summary (index.json)."""
        return read_index(self.root)

    def _write_index(self, modules: dict[str, dict]) -> None:
        write_index(self.root, modules)

    def names(self) -> list[str]:
        """The modules' names, sorted."""
        return sorted(self.read_index())

    def __contains__(self, name: str) -> bool:
        return name in self.read_index()

    def __len__(self) -> int:
        return len(self.read_index())

    def list(self, kind: str | None = None, task: str | None = None, backbone: str | None = None) -> list[tuple[str, dict]]:
        """Index entries, optionally filtered; reads ``index.json`` only."""
        return select(self.read_index(), kind=kind, task=task, backbone=backbone)

    # -- writing -----------------------------------------------------------------------
    def add(
        self,
        manifest: ModuleManifest,
        module: ModuleSet,
        head_state: dict[str, torch.Tensor] | None = None,
        *,
        overwrite: bool = False,
        training_log: str | None = None,
    ) -> ModuleManifest:
        """Write one module and its index entry; never touches another module's files.

        ``training_log`` (JSON lines, one per epoch) is kept beside the manifest as
        ``log.jsonl`` for plots and reports.

        Everything that can be checked is checked before the first byte is written: the
        name, finite weights, a manifest that serialises to JSON.
        """
        name = check_module_name(manifest.name)
        state = module.state_dict()
        _check_finite(state, f"module {name!r}")
        if head_state:
            _check_finite(head_state, f"head of module {name!r}")
        manifest.num_parameters = module.num_parameters()
        dumps_json(manifest.to_dict(), where=f"manifest of module {name!r}")
        if not overwrite and name in self.read_index():
            raise ZooError(f"the zoo {self.root} already has a module named {name!r}")
        with self._staging(name) as staging:
            manifest.weights = {"file": WEIGHTS_FILE, "sha256": save_tensors(staging / WEIGHTS_FILE, state)}
            if head_state:
                manifest.head = {**manifest.head, "file": HEAD_FILE,
                                 "sha256": save_tensors(staging / HEAD_FILE, head_state)}
            if training_log:
                atomic_write_text(staging / LOG_FILE, training_log)
            write_json(staging / MANIFEST_FILE, manifest.to_dict())
            atomic_write_text(staging / CARD_FILE, module_card(manifest))
            fsync_dir(staging)
            with self._locked():
                index = self.read_index()
                target = self.module_dir(name)
                if name in index and not overwrite:
                    raise ZooError(f"the zoo {self.root} already has a module named {name!r}")
                # A directory not in the index is an earlier writer's orphan: replaced too.
                target.parent.mkdir(parents=True, exist_ok=True)
                old = self._to_trash(target, name) if target.exists() else None
                os.replace(staging, target)
                fsync_dir(target.parent)
                index[name] = manifest.index_entry()
                self._write_index(index)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
        return manifest

    def _to_trash(self, directory: Path, name: str) -> Path:
        # Rename first so a crash mid-delete never leaves a half-deleted module in place;
        # until the index moves on, repair() can still put it back.
        trash = self.root / TRASH_DIR / f"{name}.{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(directory, trash)
        fsync_dir(directory.parent)
        return trash

    def _discard(self, directory: Path) -> None:
        shutil.rmtree(self._to_trash(directory, directory.name), ignore_errors=True)

    def remove(self, name: str) -> None:
        """Remove one module and its index entry, under the zoo lock."""
        if not (self.root / INDEX_FILE).is_file():
            raise ZooError(f"{self.root} is not a zoo (no {INDEX_FILE})")
        with self._locked():
            index = self.read_index()
            if name not in index:
                raise ZooError(f"no module named {name!r} in the zoo {self.root}")
            target = self.module_dir(name)
            trash = self._to_trash(target, name) if target.exists() else None
            del index[name]
            self._write_index(index)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)

    # -- reading -----------------------------------------------------------------------
    def manifest(self, name: str) -> ModuleManifest:
        """Module ``name``'s manifest, checked against its directory."""
        directory = self.module_dir(name)
        if name not in self.read_index() or not directory.is_dir():
            raise ZooError(f"no module named {name!r} in the zoo {self.root}")
        path = directory / MANIFEST_FILE
        manifest = ModuleManifest.from_dict(read_json(path), where=str(path))
        if manifest.name != name:
            raise FormatError(f"{path}: the manifest names the module {manifest.name!r}, but it is stored as {name!r}")
        return manifest

    def load(self, name: str, backbone: Backbone) -> ModuleSet:
        """Build the module for ``backbone``: fingerprint checked first, then the sha256,
        then every tensor's name and shape against the config, before any allocation."""
        manifest = self.manifest(name)
        check_backbone(manifest, backbone)
        where = str(self.module_dir(name) / MANIFEST_FILE)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                config = config_from_dict(manifest.module)
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None
        for warning in caught:  # say which module a "newer vimw" warning is about
            warnings.warn(f"{where}: {warning.message}", warning.category, stacklevel=2)
        tensors = load_tensors(self.module_dir(name) / WEIGHTS_FILE, expected_sha256=manifest.weights["sha256"])
        _check_shapes(config, backbone, tensors, where=str(self.module_dir(name) / WEIGHTS_FILE))
        module = ModuleSet.create(config, backbone.sites)
        module.load_weights(tensors)
        return module.eval().requires_grad_(False)  # zoo modules are frozen where they are used

    def load_head(self, name: str) -> dict[str, torch.Tensor]:
        """The midstream head saved with module ``name``."""
        manifest = self.manifest(name)
        if not manifest.head.get("file"):
            raise ZooError(f"module {name!r} ({self.module_dir(name)}) was saved without its head")
        return load_tensors(self.module_dir(name) / HEAD_FILE, expected_sha256=manifest.head["sha256"])

    # -- checking ----------------------------------------------------------------------
    def _check_directory(self, directory: Path, name: str) -> tuple[ModuleManifest | None, list[str]]:
        """Whether one module directory is complete and self-consistent (files vs manifest)."""
        path = directory / MANIFEST_FILE
        try:
            manifest = ModuleManifest.from_dict(read_json(path), where=str(path))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # checking, not loading: unknown keys are fine
                config_from_dict(manifest.module)
        except VimwError as exc:
            return None, [str(exc)]
        problems = []
        if manifest.name != name:
            problems.append(f"{path} names the module {manifest.name!r}, but its directory is {name!r}")
        for label, record, filename in (("weights", manifest.weights, WEIGHTS_FILE), ("head", manifest.head, HEAD_FILE)):
            if label == "head" and not record.get("file"):
                continue
            file = directory / filename
            if not file.is_file():
                problems.append(f"{label} file {file} is missing")
            elif sha256_file(file) != record.get("sha256"):
                problems.append(f"{label} file {file} does not match its recorded sha256 (modified or corrupted)")
        return (None if problems else manifest), problems

    def verify(self) -> list[str]:
        """Every problem found, one sentence each; an empty list means the zoo is sound.

        Leftovers of interrupted writes that are invisible to readers (staging
        directories, temporary files) are not problems; see ``leftovers()``.
        """
        problems: list[str] = []
        try:
            index = self.read_index()
        except VimwError as exc:
            return [str(exc)]
        for name, entry in sorted(index.items()):
            directory = self.module_dir(name)
            if not directory.is_dir():
                problems.append(f"{name}: listed in the index but {directory} is missing")
                continue
            manifest, found = self._check_directory(directory, name)
            problems += [f"{name}: {p}" for p in found]
            if manifest is not None and entry.get("sha256") != manifest.weights.get("sha256"):
                problems.append(f"{name}: the index and the manifest record different sha256 values")
        modules_root = self.root / MODULES_DIR
        if modules_root.is_dir():
            for directory in sorted(modules_root.iterdir()):
                if directory.name not in index:
                    problems.append(
                        f"{directory.name}: {directory} is not in the index (left by an interrupted write? "
                        "'vimw zoo verify --repair' re-indexes it if it verifies, else removes it)"
                    )
        return problems

    def leftovers(self) -> list[Path]:
        """Garbage from writers that died: their staging directories, trash, temporary files."""
        found: list[Path] = []
        staging_root = self.root / STAGING_DIR
        if staging_root.is_dir():
            for path in sorted(staging_root.iterdir()):
                owner = path if path.name.endswith(OWNER_SUFFIX) else path.with_name(path.name + OWNER_SUFFIX)
                if not lock_is_held(owner):
                    found.append(path)
        trash_root = self.root / TRASH_DIR
        if trash_root.is_dir():
            found += sorted(trash_root.iterdir())
        if self.root.is_dir():
            found += sorted(p for p in self.root.iterdir() if p.is_file() and is_temporary(p))
        return found

    def repair(self) -> list[str]:
        """Bring the zoo back to a sound state after crashed writers; what was done, one line each.

        Under the index lock: a dead writer's staging directory and temporary files are
        deleted; a module directory missing from the index is re-indexed if its files
        verify, else removed; an index entry whose directory is gone is restored from the
        trash when the old copy is there (a replace or remove that died half-way), else
        dropped. A listed module whose files are corrupt is left alone: ``verify`` keeps
        reporting it, since deleting someone's module is not a repair.
        """
        actions: list[str] = []
        if not self.root.is_dir():
            return actions
        with self._locked():
            try:
                index = self.read_index()
            except FormatError as exc:
                raise ZooError(f"cannot repair {self.root}: its index is unreadable ({exc}); restore index.json") from exc
            changed = False
            modules_root = self.root / MODULES_DIR
            trash_root = self.root / TRASH_DIR
            # 1. index entries without a directory: put back an interrupted replace/remove.
            for name, entry in sorted(index.items()):
                directory = self.module_dir(name)
                if directory.is_dir():
                    continue
                restored = False
                for candidate in sorted(trash_root.glob(f"{name}.*")) if trash_root.is_dir() else []:
                    if candidate.name.rsplit(".", 1)[0] != name:
                        continue
                    manifest, _ = self._check_directory(candidate, name)
                    if manifest is not None and manifest.weights["sha256"] == entry.get("sha256"):
                        directory.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(candidate, directory)
                        actions.append(f"{name}: restored from {candidate} (an interrupted replace or remove)")
                        restored = True
                        break
                if not restored:
                    del index[name]
                    changed = True
                    actions.append(f"{name}: dropped from the index, its directory {directory} is missing")
            # 2. module directories: orphans re-indexed or removed; stale index entries refreshed.
            if modules_root.is_dir():
                for directory in sorted(modules_root.iterdir()):
                    if not directory.is_dir():
                        directory.unlink()
                        actions.append(f"removed {directory}: not a module directory")
                        continue
                    manifest, problems = self._check_directory(directory, directory.name)
                    if directory.name not in index:
                        if manifest is not None:
                            index[directory.name] = manifest.index_entry()
                            changed = True
                            actions.append(f"{directory.name}: re-indexed (complete module missing from the index)")
                        else:
                            self._discard(directory)
                            actions.append(f"{directory.name}: removed incomplete module ({'; '.join(problems)})")
                    elif manifest is not None and index[directory.name] != manifest.index_entry():
                        index[directory.name] = manifest.index_entry()
                        changed = True
                        actions.append(f"{directory.name}: index entry refreshed from its manifest")
            if changed:
                self._write_index(index)
            # 3. garbage nobody will read.
            for path in self.leftovers():
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                actions.append(f"removed {path} (left by an interrupted write)")
        return actions


def _check_shapes(config, backbone: Backbone, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Compare the file's tensors with what ``config`` builds on ``backbone`` without
    allocating it (a manifest claiming a huge size must not exhaust memory)."""
    try:
        with torch.device("meta"):
            expected = ModuleSet.create(config, backbone.sites).state_dict()
    except VimwError as exc:  # e.g. the config selects sites this backbone does not have
        raise type(exc)(f"{where}: {exc}") from None
    except (RuntimeError, OverflowError, MemoryError, ValueError) as exc:
        raise FormatError(f"{where}: the module config {config} cannot be built ({exc})") from None
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise FormatError(
            f"{where}: the weights do not match the {config.kind} config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, want in expected.items():
        got = tensors[key]
        if tuple(got.shape) != tuple(want.shape):
            raise FormatError(f"{where}: {key!r} has shape {tuple(got.shape)}, the config expects {tuple(want.shape)}")
        if not got.is_floating_point():
            raise FormatError(f"{where}: {key!r} has non-float dtype {got.dtype}")
        if not bool(torch.isfinite(got).all()):
            raise FormatError(f"{where}: {key!r} contains NaN or infinite values")


def check_backbone(manifest: ModuleManifest, backbone: Backbone) -> None:
    """Refuse a backbone whose fingerprint differs from the one the module was trained on."""
    if manifest.fingerprint != backbone.fingerprint():
        raise BackboneMismatchError(
            f"module {manifest.name!r} was trained on backbone {manifest.backbone.get('arch')!r} "
            f"(fingerprint {manifest.fingerprint[:12]}), but it is being loaded into {backbone.arch!r} "
            f"(fingerprint {backbone.fingerprint()[:12]}); a module only works on the backbone it was trained on"
        )


def verify_or_raise(zoo: Zoo) -> None:
    """Raise ``IntegrityError`` listing every problem ``zoo.verify()`` finds."""
    problems = zoo.verify()
    if problems:
        raise IntegrityError(f"zoo {zoo.root} failed verification:\n  " + "\n  ".join(problems))

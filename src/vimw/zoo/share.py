"""Zoos that people share: import modules from another zoo directory, and compare two zoos.

``import_modules`` copies modules file by file (the bytes are never re-encoded, so the
recorded sha256 values stay valid). Before anything is written it checks every chosen
module: its files against the sha256 in its manifest, its backbone fingerprint against
the destination's backbone, and its name against the destination's modules. A module
the destination already holds with the same weights is skipped, so importing twice is
a no-op; the same name with other weights is refused (``--rename OLD=NEW``).

Writes follow ``Zoo.add``: each module is copied completely under ``.staging``; then,
under the destination's lock, the directories are renamed into ``modules/`` and the
index is rewritten once, so readers see the zoo before the import or after it. After a
crash, ``vimw zoo verify --repair`` keeps the modules that landed whole, and running
the same import again completes it.
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from vimw.errors import BackboneMismatchError, IntegrityError
from vimw.io import atomic_write_text, fsync_dir, sha256_file, write_json
from vimw.io.names import ZOO_INDEX_FILE
from vimw.io.names import MODULE_CARD_FILE as CARD_FILE
from vimw.zoo.card import module_card
from vimw.zoo.index import ZooError
from vimw.zoo.manifest import check_module_name
from vimw.zoo.store import HEAD_FILE, LOG_FILE, MANIFEST_FILE, WEIGHTS_FILE, Zoo


@dataclass
class ImportReport:
    imported: list[tuple[str, str]] = field(default_factory=list)  # (source name, destination name)
    unchanged: list[tuple[str, str]] = field(default_factory=list)  # already there with the same weights


def parse_renames(pairs: list[str] | None) -> dict[str, str]:
    """``["OLD=NEW", ...]`` -> {OLD: NEW}; both must be valid module names."""
    renames: dict[str, str] = {}
    for pair in pairs or []:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise ZooError(f"--rename expects OLD=NEW, got {pair!r}")
        check_module_name(old)
        check_module_name(new)
        if old in renames:
            raise ZooError(f"--rename gives {old!r} two new names")
        renames[old] = new
    return renames


def _zoo_fingerprints(zoo: Zoo) -> dict[str, str]:
    """Fingerprint -> backbone arch of the modules a zoo holds."""
    return {str(e.get("fingerprint")): str(e.get("backbone")) for e in zoo.read_index().values()}


def import_modules(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    names: list[str] | None = None,
    renames: dict[str, str] | None = None,
    *,
    fingerprint: str | None = None,
) -> ImportReport:
    """Copy ``names`` (default: all) from the zoo at ``source`` into the zoo at ``destination``.

    ``fingerprint``: the backbone the destination is for (default: that of its modules;
    an empty destination takes the source modules' one, which must then be unique).
    Raises before writing anything if a module fails its checks.
    """
    src, dst = Zoo(source), Zoo(destination)
    if not (src.root / ZOO_INDEX_FILE).is_file():
        raise ZooError(f"{src.root} is not a zoo (no index.json)")
    if src.root.resolve() == dst.root.resolve():
        raise ZooError(f"the source and destination are the same zoo ({src.root})")
    index = src.read_index()
    renames = dict(renames or {})
    chosen = list(names) if names else sorted(index)
    if len(set(chosen)) != len(chosen):
        raise ZooError(f"a module is named twice in {chosen}")
    missing = [n for n in chosen + list(renames) if n not in index]
    if missing:
        raise ZooError(f"the zoo {src.root} has no module(s) {sorted(set(missing))}; it has {sorted(index)}")
    not_chosen = sorted(set(renames) - set(chosen))
    if not_chosen:
        raise ZooError(f"--rename names module(s) {not_chosen} that are not being imported")
    targets = [renames.get(n, n) for n in chosen]
    if len(set(targets)) != len(targets):
        raise ZooError(f"two modules would get the same name in {dst.root}: {targets}")

    # 1. Every module is checked before anything is written.
    manifests = {}
    for name in chosen:
        manifest, problems = src._check_directory(src.module_dir(name), name)
        if manifest is not None and index[name].get("sha256") != manifest.weights.get("sha256"):
            problems = problems + ["the index and the manifest record different sha256 values"]
        if manifest is None or problems:
            raise IntegrityError(f"module {name!r} of {src.root} fails verification, nothing imported: "
                                 + "; ".join(problems))
        manifests[name] = manifest
    wanted = {fingerprint} if fingerprint else set(_zoo_fingerprints(dst))
    if not wanted:
        wanted = {m.fingerprint for m in manifests.values()}
        if len(wanted) > 1:
            raise BackboneMismatchError(
                f"the modules chosen from {src.root} are for {len(wanted)} different backbones; a zoo holds "
                "modules of one backbone: import them into separate zoos with --modules")
    elif len(wanted) > 1:
        raise BackboneMismatchError(f"{dst.root} already mixes modules of several backbones; repair it first")
    (want,) = wanted
    dst_arch = _zoo_fingerprints(dst).get(want, "this zoo's backbone")
    for name, manifest in manifests.items():
        if manifest.fingerprint != want:
            raise BackboneMismatchError(
                f"module {name!r} of {src.root} was trained on backbone {manifest.backbone.get('arch')!r} "
                f"(fingerprint {manifest.fingerprint[:12]}), but {dst.root} holds modules for {dst_arch!r} "
                f"(fingerprint {want[:12]}); a module only works on the backbone it was trained on, nothing imported")

    report = ImportReport()
    todo = _plan(dst, chosen, renames, manifests, report)
    if not todo:
        return report

    # 2. Copy every module under staging, then rename them all in and write the index once.
    dst.root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        staged = {}
        for name in todo:
            target = renames.get(name, name)
            staging = stack.enter_context(dst._staging(target))
            manifest = manifests[name]
            copied = _copy_module(src.module_dir(name), staging, manifest)
            copied.name = target
            write_json(staging / MANIFEST_FILE, copied.to_dict())
            atomic_write_text(staging / CARD_FILE, module_card(copied))
            fsync_dir(staging)
            staged[name] = (target, staging, copied)
        with dst._locked():
            current = dst.read_index()
            # A writer may have added a module meanwhile: check the names again under the lock.
            _plan(dst, todo, renames, manifests, ImportReport(), current)
            old_copies = []
            for name, (target, staging, copied) in staged.items():
                directory = dst.module_dir(target)
                directory.parent.mkdir(parents=True, exist_ok=True)
                if directory.exists():  # an orphan of an earlier writer, never listed: replaced
                    old_copies.append(dst._to_trash(directory, target))
                os.replace(staging, directory)
                current[target] = copied.index_entry()
                report.imported.append((name, target))
            fsync_dir(dst.root / "modules")
            dst._write_index(current)
            for old in old_copies:
                shutil.rmtree(old, ignore_errors=True)
    return report


def _plan(dst: Zoo, chosen, renames, manifests, report: ImportReport, index: dict | None = None) -> list[str]:
    """The modules still to copy; the ones already there with the same weights go to ``report``."""
    index = dst.read_index() if index is None else index
    todo = []
    for name in chosen:
        target = renames.get(name, name)
        entry = index.get(target)
        if entry is None:
            todo.append(name)
        elif entry.get("sha256") == manifests[name].weights["sha256"]:
            report.unchanged.append((name, target))
        else:
            raise ZooError(
                f"{dst.root} already has a module named {target!r} with other weights "
                f"(sha256 {str(entry.get('sha256'))[:12]} vs {manifests[name].weights['sha256'][:12]}); "
                f"import it under another name with --rename {name}=NEW_NAME, nothing imported")
    return todo


def _copy_module(directory: Path, staging: Path, manifest):
    """Copy the module's files byte for byte and check them against the manifest's sha256."""
    files = [WEIGHTS_FILE] + ([HEAD_FILE] if manifest.head.get("file") else [])
    for filename in files + [LOG_FILE]:
        source = directory / filename
        if not source.is_file():
            continue
        shutil.copyfile(source, staging / filename)
        with open(staging / filename, "rb+") as handle:
            os.fsync(handle.fileno())
    for filename, record in ((WEIGHTS_FILE, manifest.weights), (HEAD_FILE, manifest.head)):
        if record.get("file") and sha256_file(staging / filename) != record.get("sha256"):
            raise IntegrityError(f"{directory / filename} changed while it was being imported; nothing imported")
    return type(manifest).from_dict(manifest.to_dict())


def diff_zoos(a: str | os.PathLike, b: str | os.PathLike) -> dict[str, list]:
    """Which modules two zoos share, by name and by weights (sha256), reading their indexes only."""
    za, zb = Zoo(a), Zoo(b)
    for zoo in (za, zb):
        if not (zoo.root / ZOO_INDEX_FILE).is_file():
            raise ZooError(f"{zoo.root} is not a zoo (no index.json)")
    ia, ib = za.read_index(), zb.read_index()
    by_sha_b = {}
    for name, entry in ib.items():
        by_sha_b.setdefault(entry.get("sha256"), []).append(name)
    result = {"same": [], "different": [], "renamed": [], "only_a": [], "only_b": []}
    matched_b = set()
    for name in sorted(ia):
        sha = ia[name].get("sha256")
        if name in ib:
            key = "same" if ib[name].get("sha256") == sha else "different"
            result[key].append(name)
            matched_b.add(name)
        elif sha in by_sha_b:
            others = [n for n in by_sha_b[sha] if n not in ia]
            if others:
                result["renamed"].append((name, others[0]))
                matched_b.add(others[0])
                continue
            result["only_a"].append(name)
        else:
            result["only_a"].append(name)
    result["only_b"] = sorted(n for n in ib if n not in matched_b)
    fingerprints = {z: sorted(set(_zoo_fingerprints(z))) for z in (za, zb)}
    result["backbones"] = [fingerprints[za], fingerprints[zb]]
    return result


def write_cards(zoo: Zoo, names: list[str] | None = None) -> list[Path]:
    """(Re)write the module card of ``names`` (default: every module), each atomically."""
    written = []
    with zoo._locked():
        for name in names or zoo.names():
            path = zoo.module_dir(name) / CARD_FILE
            atomic_write_text(path, module_card(zoo.manifest(name)))
            written.append(path)
    return written

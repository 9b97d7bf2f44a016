"""The zoo index (``index.json``): one summary per module, read without importing torch.

Listing and searching a zoo reads this file only, so ``vimw zoo list`` stays fast on
zoos of thousands of modules; ``Zoo`` (``store.py``) writes it under the zoo's lock.
"""

from __future__ import annotations

import os
from pathlib import Path

from vimw.errors import FormatError, VimwError
from vimw.io.manifest import read_json, write_json
from vimw.io.names import ZOO_INDEX_FILE as INDEX_FILE
from vimw.io.names import ZOO_INDEX_FORMAT as INDEX_FORMAT
from vimw.zoo.manifest import check_module_name


class ZooError(VimwError):
    """A zoo operation cannot be done (name taken, module missing...)."""


def read_index(root: str | os.PathLike) -> dict[str, dict]:
    """Module name -> summary; an empty dict for a directory without an index."""
    root = Path(root)
    path = root / INDEX_FILE
    if not path.exists():
        if root.exists() and not root.is_dir():
            raise ZooError(f"{root} is not a directory")
        return {}
    payload = read_json(path)
    if payload.get("format") != INDEX_FORMAT or not isinstance(payload.get("modules"), dict):
        raise FormatError(f"{path}: not a vimw zoo index (format {payload.get('format')!r})")
    modules = payload["modules"]
    for name, entry in modules.items():
        if not isinstance(entry, dict):
            raise FormatError(f"{path}: the entry of {name!r} must be an object, found {type(entry).__name__}")
        try:
            check_module_name(name)
        except FormatError as exc:
            raise FormatError(f"{path}: {exc}") from None
    return modules


def write_index(root: str | os.PathLike, modules: dict[str, dict]) -> None:
    """Write the zoo's index.json (callers hold the zoo lock)."""
    write_json(Path(root) / INDEX_FILE, {"format": INDEX_FORMAT, "modules": modules})


def select(index: dict[str, dict], kind: str | None = None, task: str | None = None,
           backbone: str | None = None) -> list[tuple[str, dict]]:
    """Entries sorted by name, filtered by kind, task substring and backbone."""
    return [
        (name, entry)
        for name, entry in sorted(index.items())
        if (not kind or entry.get("kind") == kind)
        and (not task or task in str(entry.get("task")))
        and (not backbone or entry.get("backbone") == backbone)
    ]

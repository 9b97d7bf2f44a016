"""The zoo's ``recipe.json``: how each of its modules was trained, kept under the zoo's lock.

``train_module`` (and so ``build_zoo``) records every module it adds, so a zoo built
from Python carries its recipe just as one built by ``vimw zoo build``. The file is a
recipe (``vimw.recipes``): ``vimw zoo build --recipe ZOO/recipe.json`` rebuilds the zoo.
Reading it needs neither torch nor the recipe validator.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from vimw.errors import FormatError, VimwError
from vimw.io.atomic import file_lock
from vimw.io.manifest import read_json, write_json
from vimw.io.names import RECIPE_FILE, RECIPE_FORMAT, ZOO_LOCK_FILE
from vimw.version import __version__


def record_modules(root: str | os.PathLike, entries: Sequence[Mapping], *, backbone: str,
                   image_size: int | None) -> Path:
    """Add module entries (``MidstreamRecipe.to_dict()``) to ``ROOT/recipe.json``.

    Modules already recorded keep their entry and new ones are appended, under the zoo's
    lock, so concurrent trainers of one zoo add safely; an unreadable earlier file is
    replaced. ``backbone`` is what rebuilds the backbone (``Backbone.record().source``),
    ``image_size`` its input resolution (0 or None: the backbone's native one).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / RECIPE_FILE
    with file_lock(root / ZOO_LOCK_FILE):
        try:
            previous = dict(read_json(path)) if path.is_file() else {}
            modules = {m["name"]: dict(m) for m in (previous.get("zoo") or {}).get("modules") or []}
        except (VimwError, TypeError, KeyError, AttributeError):
            previous, modules = {}, {}
        for entry in entries:
            modules.setdefault(entry["name"], dict(entry))
        previous.pop("vimw_version", None)
        previous.pop("format", None)
        zoo = {"dir": str(root), "backbone": backbone, "image_size": image_size or 0, "modules": list(modules.values())}
        write_json(path, {"format": RECIPE_FORMAT, **previous, "zoo": zoo, "vimw_version": __version__})
    return path


def write_recipe_file(directory: str | os.PathLike, recipe: Mapping) -> Path:
    """Write ``DIRECTORY/recipe.json`` (atomically), stamped with the format and vimw version."""
    path = Path(directory) / RECIPE_FILE
    write_json(path, {"format": RECIPE_FORMAT, **{k: v for k, v in recipe.items() if k not in ("format", "vimw_version")},
                      "vimw_version": __version__})
    return path


def read_recipe_file(directory: str | os.PathLike) -> dict | None:
    """``DIRECTORY/recipe.json`` as written (unvalidated), or ``None`` when there is none or it cannot be read."""
    path = Path(directory) / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        data = dict(read_json(path))
    except (VimwError, TypeError, ValueError):
        return None
    data.pop("vimw_version", None)
    return data


def backbone_source(root: str | os.PathLike, recorded: Mapping) -> str:
    """What ``create_backbone`` rebuilds a zoo module's backbone from, given its manifest's ``backbone``.

    The module's recorded ``source`` when it has one. Older HF modules recorded only
    ``arch``, a directory's base name: then the backbone named by the zoo's recipe.json is
    used when it is that directory. Otherwise ``arch`` (a registry name). A recipe.json
    that is needed but unreadable raises ``FormatError`` saying how to go on.
    """
    source = recorded.get("source")
    if isinstance(source, str) and source:
        return source
    arch = recorded.get("arch")
    if not isinstance(arch, str) or not arch:
        raise FormatError(f"the zoo {root}: a module manifest records no backbone arch or source")
    if not arch.startswith("hf:"):
        return arch
    path = Path(root) / RECIPE_FILE
    if not path.is_file():
        return arch
    try:
        built_on = ((read_json(path).get("zoo") or {}).get("backbone"))
    except (VimwError, AttributeError) as exc:
        raise FormatError(f"{path} cannot be read ({exc}), and the module does not record where its backbone "
                          f"{arch!r} is: pass the backbone explicitly (vimw aggregate --backbone hf:<dir>)") from None
    if isinstance(built_on, str) and built_on.startswith("hf:") and (built_on == arch or Path(built_on[3:]).name == arch[3:]):
        return built_on
    return arch

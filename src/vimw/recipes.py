"""Recipes: one YAML file describing a zoo build, an aggregation and a transfer.

::

    zoo:
      dir: runs/recipe/zoo               # optional; --zoo overrides
      backbone: efficientnet_lite0       # or hf:<name or directory>
      image_size: 64                     # 0 or null: the backbone's native size
      modules:
        - name: mnist-digits
          task: mnist
          kind: convpass                 # convpass | lora | adapter
          module: {hidden_dim: 8}        # module config overrides
          train: {epochs: 3, lr: 0.002}  # TrainConfig fields
          max_train: 4000
          max_test: null
    aggregate:                           # vimw.workflows.aggregate.AggregateSettings
      zoo: runs/recipe/zoo               # default: zoo.dir
      task: fmnist-footwear-bags
      shots: 10
      method: auto                       # or one method: ens, zoo_init, scratch, ...
      budget: 900                        # auto: seconds for the whole search
      cv: 0                              # auto: k-fold cross-validation (k >= 2) instead of a split
      top_k: 2
      modules: null                      # list of module names (default: all)
      image_size: null                   # default: the zoo's
      backbone: null                     # default: what the zoo was built on
      out: runs/recipe/model
      train: {steps: 120, batch_size: 32, lr: null}  # SearchSettings (lr null: the method's grid)
    transfer:                            # options of `vimw transfer extract` (flags win)
      weak: efficientnet_lite0@96+invert
      apply: {to: efficientnet_lite2@160}  # options of `vimw transfer apply`; likewise refine, evaluate
      evaluate: {blend: auto}

Every section is optional. Command-line flags override the file (``resolve``, the one merge);
the effective recipe (after overrides) is written as ``recipe.json`` next to every
result (``save_effective``), so any number can be reproduced from it. PyYAML (the
``recipes`` extra) is imported only when a YAML file is read; ``.json`` recipes need
nothing.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from vimw.errors import FormatError
from vimw.io.names import RECIPE_FILE, RECIPE_FORMAT

SECTIONS = ("zoo", "aggregate", "transfer")
_OPTIONAL_INT = (int, type(None))

# key -> (accepted types, required). Types are checked strictly (a bool is not an int).
_TOP = {"format": ((int,), False), "description": ((str,), False), **{s: ((dict,), False) for s in SECTIONS}}
_ZOO = {
    "dir": ((str,), False),
    "backbone": ((str,), False),
    "image_size": (_OPTIONAL_INT, False),
    "modules": ((list,), False),
}
_MODULE = {
    "name": ((str,), True),
    "task": ((str,), True),
    "kind": ((str,), False),
    "module": ((dict,), False),
    "train": ((dict,), False),
    "max_train": (_OPTIONAL_INT, False),
    "max_test": (_OPTIONAL_INT, False),
}
_AGGREGATE = {
    "zoo": ((str, type(None)), False),
    "task": ((str, type(None)), False),
    "shots": (_OPTIONAL_INT, False),
    "method": ((str,), False),
    "top_k": ((int,), False),
    "budget": ((float, type(None)), False),
    "cv": ((int,), False),
    "modules": ((list, type(None)), False),
    "image_size": (_OPTIONAL_INT, False),
    "backbone": ((str, type(None)), False),
    "out": ((str, type(None)), False),
    "train": ((dict,), False),
}
_MODULE_CONFIG = {"hidden_dim": (int,), "rank": (int,), "first_block": _OPTIONAL_INT, "alpha": (float,),
                  "dropout": (float,)}

# -- reading and validating -----------------------------------------------------------------
def load_recipe(path: str | os.PathLike) -> dict:
    """Read and validate a recipe (``.yaml``/``.yml`` via PyYAML, ``.json`` without it)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(f"recipe {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"cannot read the recipe {path}: {exc}") from exc
    if path.suffix.lower() == ".json":
        import json

        try:
            data = json.loads(text)
        except ValueError as exc:
            raise FormatError(f"recipe {path} is not valid JSON: {exc}") from exc
    else:
        from vimw._extras import require

        yaml = require("yaml", "recipes", "Reading a YAML recipe")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise FormatError(f"recipe {path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    return validate_recipe(data if data is not None else {}, source=str(path))


def validate_recipe(data: Any, *, source: str = "recipe") -> dict:
    """Check keys and types; return a deep copy. Raises ``FormatError`` naming the bad key."""
    _check_mapping(data, _TOP, source)
    if data.get("format", RECIPE_FORMAT) != RECIPE_FORMAT:
        raise FormatError(f"{source}: format {data['format']!r} is not supported (this vimw reads format {RECIPE_FORMAT})")
    zoo = data.get("zoo")
    if zoo is not None:
        from vimw.modules import DEFAULT_MODULE_KIND

        _check_mapping(zoo, _ZOO, f"{source}: zoo")
        _check_image_size(zoo.get("image_size"), f"{source}: zoo.image_size")
        seen = set()
        for i, module in enumerate(zoo.get("modules") or []):
            where = f"{source}: zoo.modules[{i}]"
            _check_mapping(module, _MODULE, where)
            if module["name"] in seen:
                raise FormatError(f"{where}: module name {module['name']!r} appears twice")
            seen.add(module["name"])
            _check_module_config(module.get("kind", DEFAULT_MODULE_KIND), module.get("module") or {}, f"{where}.module")
            _check_train(module.get("train") or {}, f"{where}.train")
            for key in ("max_train", "max_test"):
                if module.get(key) is not None and module[key] < 1:
                    raise FormatError(f"{where}.{key}: must be >= 1, got {module[key]}")
    aggregate = data.get("aggregate")
    if aggregate is not None:
        _check_aggregate(aggregate, f"{source}: aggregate")
    return copy.deepcopy(data)


def _type_names(types: tuple) -> str:
    names = {int: "an integer", float: "a number", str: "a string", dict: "a mapping", list: "a list",
             bool: "true/false", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_type(value: Any, types: tuple, where: str) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise FormatError(f"{where}: expected {_type_names(types)}, got {type(value).__name__} {value!r}")


def _check_mapping(data: Any, schema: dict, where: str) -> None:
    if not isinstance(data, dict):
        raise FormatError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in schema)
    if unknown:
        raise FormatError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(schema)}")
    for key, (types, required) in schema.items():
        if key not in data:
            if required:
                raise FormatError(f"{where}: missing required key {key!r}")
            continue
        _check_type(data[key], types, f"{where}.{key}")


def _check_image_size(value: Any, where: str) -> None:
    if value is not None and value < 0:
        raise FormatError(f"{where}: must be >= 0 (0 = the backbone's native size), got {value}")


def _check_module_config(kind: str, config: dict, where: str) -> None:
    if "kind" in config:
        raise FormatError(f"{where}: give the module kind as the module's 'kind', not inside 'module'")
    for key, value in config.items():
        if key in _MODULE_CONFIG:
            _check_type(value, _MODULE_CONFIG[key], f"{where}.{key}")
    import warnings

    from vimw.errors import VimwError
    from vimw.modules import config_from_dict
    from vimw.modules.registry import lookup_module_kind

    entry = lookup_module_kind(kind)
    if entry is not None:
        allowed = {f.name for f in fields(entry.config_cls)} - {"kind"}
        unknown = sorted(str(k) for k in config if k not in allowed)
        if unknown:
            raise FormatError(f"{where}: unknown {kind} setting(s) {unknown}; allowed: {sorted(allowed)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config_from_dict({"kind": kind, **config})
    except (VimwError, TypeError, ValueError) as exc:
        raise FormatError(f"{where}: {exc}") from None


def _field_types(cls) -> dict[str, tuple]:
    """Accepted JSON types of each field of a settings dataclass (optional fields may be null)."""
    types: dict[str, tuple] = {}
    for f in fields(cls):
        default = f.default
        optional = default is None or f.name == "grad_clip"
        if isinstance(default, bool):
            types[f.name] = (bool,)
        elif isinstance(default, int) or f.name in ("epochs", "steps"):
            types[f.name] = (int, type(None)) if optional else (int,)
        else:
            types[f.name] = (float, type(None)) if optional else (float,)
    return types


def _check_settings(train: dict, where: str, cls) -> None:
    """Keys, types and finiteness of a ``train`` mapping against the settings class ``cls``."""
    types = _field_types(cls)
    if not isinstance(train, dict):
        raise FormatError(f"{where}: expected a mapping")
    unknown = sorted(str(k) for k in train if k not in types)
    if unknown:
        raise FormatError(f"{where}: unknown training setting(s) {unknown}; allowed: {sorted(types)}")
    for key, value in train.items():
        _check_type(value, types[key], f"{where}.{key}")
        if isinstance(value, float) and not math.isfinite(value):
            raise FormatError(f"{where}.{key}: must be finite, got {value}")


def _check_train(train: dict, where: str) -> None:
    from vimw.training import TrainConfig

    _check_settings(train, where, TrainConfig)
    train_config(train, where)  # TrainConfig's own range checks


def _check_aggregate(section: dict, where: str) -> None:
    from vimw.errors import VimwError
    from vimw.workflows.aggregate import AggregateSettings
    from vimw.workflows.compare import SearchSettings

    _check_mapping(section, _AGGREGATE, where)
    _check_settings(section.get("train") or {}, f"{where}.train", SearchSettings)
    try:
        SearchSettings(**{**SearchSettings().to_dict(), **(section.get("train") or {})})
    except VimwError as exc:
        raise FormatError(f"{where}.train: {exc}") from None
    if section.get("modules") is not None and not all(isinstance(m, str) for m in section["modules"]):
        raise FormatError(f"{where}.modules: must be a list of module names")
    try:
        AggregateSettings.from_section(section)  # the settings' own checks (method name, ranges)
    except VimwError as exc:
        raise FormatError(f"{where}: {exc}") from None


def train_config(train: dict | None, where: str = "recipe"):
    """A ``TrainConfig`` from a recipe's ``train`` mapping (unset fields keep their defaults)."""
    from vimw.training import TrainConfig

    try:
        return TrainConfig(**(train or {}))
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise FormatError(f"{where}: {exc}") from None


# -- recipes <-> vimw objects -----------------------------------------------------------------
def midstream_recipes(recipe: dict) -> tuple:
    """The zoo section's modules as ``MidstreamRecipe`` objects (for ``build_zoo``)."""
    from vimw.workflows.midstream import MidstreamRecipe

    modules = (recipe.get("zoo") or {}).get("modules") or []
    return tuple(
        MidstreamRecipe(
            name=m["name"], task=m["task"], kind=m.get("kind", MidstreamRecipe.kind), module=dict(m.get("module") or {}),
            train=train_config(m.get("train"), f"zoo.modules[{i}].train"),
            max_train=m.get("max_train"), max_test=m.get("max_test"),
        )
        for i, m in enumerate(modules)
    )


def default_recipe() -> dict:
    """The built-in default: the default zoo (``DEFAULT_RECIPE``) and the demo's aggregation, from the
    settings objects (``recipes/default.yaml`` is this, written out; a test keeps them equal)."""
    from vimw.workflows.demo import DemoSettings
    from vimw.workflows.midstream import DEFAULT_BACKBONE, DEFAULT_IMAGE_SIZE, DEFAULT_RECIPE

    demo = DemoSettings()
    return {
        "format": RECIPE_FORMAT,
        "zoo": {"dir": demo.zoo_dir, "backbone": DEFAULT_BACKBONE, "image_size": DEFAULT_IMAGE_SIZE,
                "modules": [r.to_dict() for r in DEFAULT_RECIPE]},
        "aggregate": demo.aggregate_settings().to_section(),
    }


def resolve(recipe: str | os.PathLike | dict | None, section: str, flags: dict, *,
            defaults: dict | None = None) -> dict:
    """The effective recipe for one section: ``defaults`` <- the recipe's section <- ``flags``.

    ``recipe`` is a file to read, a recipe already read, or ``None``. ``flags`` are what the
    user gave on the command line (``None`` = not given), keyed like the section; a ``train``
    mapping merges field by field. The whole recipe is returned (other sections as they
    were), validated. This is the one merge every command uses.
    """
    loaded = recipe if isinstance(recipe, dict) else (load_recipe(recipe) if recipe else {})
    body = _layer(defaults or {}, loaded.get(section) or {}, keep_none=True)
    body = _layer(body, flags, keep_none=False)
    return validate_recipe({**loaded, section: body}, source="effective recipe")


def _layer(section: dict, values: dict, *, keep_none: bool) -> dict:
    """``section`` with ``values`` laid over it (mappings such as ``train`` merged field by field)."""
    out = copy.deepcopy(section)
    for key, value in values.items():
        if value is None and not keep_none:
            continue
        if isinstance(value, dict):
            given = {k: v for k, v in value.items() if keep_none or v is not None}
            out[key] = {**(out.get(key) or {}), **copy.deepcopy(given)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def save_effective(directory: str | os.PathLike, recipe: dict) -> Path:
    """Write the effective recipe as ``DIRECTORY/recipe.json`` (atomically)."""
    from vimw.zoo.recipe import write_recipe_file

    return write_recipe_file(directory, recipe)


def read_effective(directory: str | os.PathLike) -> dict | None:
    """The ``recipe.json`` saved in ``directory``, validated, or ``None`` when there is none."""
    from vimw.io import read_json

    path = Path(directory) / RECIPE_FILE
    if not path.is_file():
        return None
    data = dict(read_json(path))
    data.pop("vimw_version", None)
    return validate_recipe(data, source=str(path))


__all__ = [
    "RECIPE_FILE",
    "resolve",
    "default_recipe",
    "load_recipe",
    "midstream_recipes",
    "read_effective",
    "save_effective",
    "train_config",
    "validate_recipe",
]

"""Module configs: dataclasses saved as JSON next to the weights (the shared base; each kind's
own config lives in its folder, ``vimw/modules/<kind>/config.py``).

A config says which kind of module to build, at which sites, and with which sizes.
``to_dict`` stamps the kind and the vimw version; ``config_from_dict`` reads a dict
written by this or a newer vimw: keys it does not know are dropped with a warning
(forward compatibility, as in PEFT), anything it cannot trust raises ``FormatError``.
"""

from __future__ import annotations

import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from vimw.sites import Site
from vimw.errors import BackboneMismatchError, FormatError
from vimw.modules.registry import list_module_kinds, lookup_module_kind
from vimw.version import __version__

# Keys every saved config carries besides its fields.
STAMP_KEYS: tuple[str, ...] = ("kind", "vimw_version")


@dataclass
class ModuleConfig:
    """What every module kind shares: where it attaches, and its dropout.

    ``sites``: site names to attach to, or ``None`` for every site. ``first_block``:
    attach only to sites whose ``block >= first_block`` (``None``: no limit). Both
    filters combine. ``dropout`` acts only in training mode.
    """

    kind: ClassVar[str] = ""

    sites: list[str] | None = None
    first_block: int | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.sites, tuple):
            self.sites = list(self.sites)
        _check_field_types(self)
        _coerce_floats(self)
        self.validate()

    def validate(self) -> None:
        """Value checks; subclasses extend with their own fields."""
        if self.sites is not None:
            if not self.sites:
                raise FormatError(f"{self.kind}: 'sites' is an empty list; use None for every site")
            if len(set(self.sites)) != len(self.sites):
                raise FormatError(f"{self.kind}: 'sites' lists a site twice: {self.sites}")
        if self.first_block is not None and self.first_block < 0:
            raise FormatError(f"{self.kind}: 'first_block' must be >= 0, got {self.first_block}")
        if not 0.0 <= self.dropout < 1.0:
            raise FormatError(f"{self.kind}: 'dropout' must be in [0, 1), got {self.dropout}")

    def select_sites(self, sites: Sequence[Site]) -> list[Site]:
        """The backbone sites this config attaches to, in backbone order."""
        if self.sites is not None:
            known = {s.name for s in sites}
            missing = [name for name in self.sites if name not in known]
            if missing:
                raise BackboneMismatchError(
                    f"{self.kind}: the backbone has no sites named {missing}; it has {sorted(known)}"
                )
        chosen = [
            s
            for s in sites
            if (self.sites is None or s.name in self.sites)
            and (self.first_block is None or s.block >= self.first_block)
        ]
        if not chosen:
            raise BackboneMismatchError(
                f"{self.kind}: no site matches sites={self.sites}, first_block={self.first_block}"
            )
        return chosen

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, stamped with the kind and the vimw version."""
        return {"kind": self.kind, "vimw_version": __version__, **asdict(self)}


@dataclass
class BottleneckConfig(ModuleConfig):
    """What the bottleneck kinds share: a positive hidden size ``hidden_dim``, dropout 0.1."""

    hidden_dim: int = 8
    dropout: float = 0.1

    def validate(self) -> None:
        super().validate()
        require_positive(self, "hidden_dim")


def config_from_dict(data: Mapping[str, Any]) -> ModuleConfig:
    """Rebuild a config saved by ``to_dict`` (possibly by a newer vimw)."""
    if not isinstance(data, Mapping):
        raise FormatError(f"a module config must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    if not isinstance(kind, str):
        raise FormatError(f"a module config needs a string 'kind', got {kind!r}")
    entry = lookup_module_kind(kind)
    if entry is None:
        raise FormatError(f"unknown module kind {kind!r}; registered: {', '.join(list_module_kinds())}")
    names = {f.name for f in fields(entry.config_cls)}
    unknown = sorted(k for k in data if k not in names and k not in STAMP_KEYS)
    if unknown:
        # A newer vimw may add options; the module still loads without them.
        warnings.warn(
            f"{kind} config written by vimw {data.get('vimw_version', '?')}: "
            f"ignoring unknown keys {unknown}",
            UserWarning,
            stacklevel=2,
        )
    return entry.config_cls(**{k: v for k, v in data.items() if k in names})


def require_positive(config: ModuleConfig, name: str) -> None:
    """Raise ``FormatError`` unless the integer field ``name`` is at least 1."""
    value = getattr(config, name)
    if value < 1:
        raise FormatError(f"{config.kind}: {name!r} must be >= 1, got {value}")


def _check_field_types(config: ModuleConfig) -> None:
    """Raise ``FormatError`` naming the first field whose value has the wrong type."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        if not _value_matches(value, hints[f.name]):
            raise FormatError(
                f"{config.kind}: {f.name!r} must be {hints[f.name]}, got {value!r} ({type(value).__name__})"
            )


def _coerce_floats(config: ModuleConfig) -> None:
    """Store integers given for float fields as floats, so saved JSON is stable."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        if hints[f.name] is float and isinstance(value, int):
            setattr(config, f.name, float(value))


def _value_matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a simple type hint (int, float, str, bool, None, list[X], unions)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_value_matches(value, arg) for arg in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_value_matches(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:  # JSON writes 1.0 as 1 in some tools; bool is never a number here
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)

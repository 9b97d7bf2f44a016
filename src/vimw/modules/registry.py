"""Module kinds registered by name, each with its config class and per-site module class.

A kind registers itself by decorating its ``SiteModule`` subclass::

    @register_module_kind("convpass", ConvpassConfig)
    class ConvpassModule(SiteModule): ...

This file imports nothing else from ``vimw.modules`` at run time, so configs and
module classes can both depend on it without an import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vimw.errors import RegistryError

if TYPE_CHECKING:
    from vimw.modules.base import SiteModule
    from vimw.modules.config import ModuleConfig

DEFAULT_MODULE_KIND = "convpass"  # the module kind ViM itself uses (Feng et al. 2023)


@dataclass(frozen=True)
class ModuleKind:
    """One registered module kind: its name, config class and per-site module class."""

    name: str
    config_cls: type[ModuleConfig]
    module_cls: type[SiteModule]


_REGISTRY: dict[str, ModuleKind] = {}


def register_module_kind(
    name: str, config_cls: type[ModuleConfig]
) -> Callable[[type[SiteModule]], type[SiteModule]]:
    """Class decorator registering a ``SiteModule`` subclass under ``name``."""
    if config_cls.kind != name:
        raise RegistryError(f"module kind {name!r}: its config class says kind {config_cls.kind!r}")

    def decorator(module_cls: type[SiteModule]) -> type[SiteModule]:
        if name in _REGISTRY:
            raise RegistryError(f"module kind {name!r} is registered twice")
        _REGISTRY[name] = ModuleKind(name, config_cls, module_cls)
        module_cls.kind = name
        return module_cls

    return decorator


def lookup_module_kind(name: str) -> ModuleKind | None:
    """The registered kind ``name``, or ``None``."""
    return _REGISTRY.get(name)


def get_module_kind(name: str) -> ModuleKind:
    """The registered kind ``name``; a ``RegistryError`` listing the known ones otherwise."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise RegistryError(f"unknown module kind {name!r}; registered: {', '.join(list_module_kinds()) or 'none'}")
    return entry


def list_module_kinds() -> list[str]:
    """The names of the registered module kinds, sorted."""
    return sorted(_REGISTRY)

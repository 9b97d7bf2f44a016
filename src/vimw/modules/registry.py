"""Module kinds registered by name, each with its config, its per-site module and its capabilities.

A kind lives in one folder (``vimw/modules/<kind>/``) and registers itself there, as a
PEFT tuner does, by decorating (or passing) its ``SiteModule`` subclass::

    register_module_kind("lora", LoRAConfig, stacked=StackedLoRA, foldable=True,
                         peft=LORA_PEFT)(LoRAModule)

What the rest of vimw may do with a kind is *declared* here, never guessed:

- ``stacked``: a ``StackedModules`` subclass that runs N modules of the kind at one
  site as one grouped computation (``None``: aggregation loops over them);
- ``foldable``: the module is linear in what it taps at an ``inner`` tap and its
  ``delta_weight()`` is that map as a dense ``out x inner`` matrix, so it can be
  folded into the sublayer's final projection and merged exactly;
- ``mergeable``: averaging the parameters of modules of one config is meaningful
  (aggregation mode ``merge``);
- ``peft``: its mapping to a PEFT adapter type (``peft_type`` is that type, or ``None``).

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
    from vimw.modules.peft import PeftMapping
    from vimw.modules.stacked import StackedModules

DEFAULT_MODULE_KIND = "convpass"  # the module kind ViM itself uses (Feng et al. 2023)


@dataclass(frozen=True)
class ModuleKind:
    """One registered module kind: its classes and the capabilities it declares."""

    name: str
    config_cls: type[ModuleConfig]
    module_cls: type[SiteModule]
    stacked_cls: type[StackedModules] | None = None
    foldable: bool = False
    mergeable: bool = True
    peft: PeftMapping | None = None

    @property
    def peft_type(self) -> str | None:
        """PEFT's name for the kind's adapter type (``"LORA"``), or ``None`` without a mapping."""
        return self.peft.peft_type if self.peft is not None else None


_REGISTRY: dict[str, ModuleKind] = {}


def register_module_kind(
    name: str,
    config_cls: type[ModuleConfig],
    *,
    stacked: type[StackedModules] | None = None,
    foldable: bool = False,
    mergeable: bool = True,
    peft: PeftMapping | None = None,
) -> Callable[[type[SiteModule]], type[SiteModule]]:
    """Class decorator registering a ``SiteModule`` subclass under ``name``, with its capabilities."""
    if config_cls.kind != name:
        raise RegistryError(f"module kind {name!r}: its config class says kind {config_cls.kind!r}")

    def decorator(module_cls: type[SiteModule]) -> type[SiteModule]:
        if name in _REGISTRY:
            raise RegistryError(f"module kind {name!r} is registered twice")
        if foldable:
            _check_foldable(name, module_cls)
        _REGISTRY[name] = ModuleKind(name, config_cls, module_cls, stacked, bool(foldable), bool(mergeable), peft)
        module_cls.kind = name
        return module_cls

    return decorator


def _check_foldable(name: str, module_cls: type[SiteModule]) -> None:
    # Folding adds delta_weight() to the final projection, whose input is the inner tap.
    if module_cls.tap != "inner" or not callable(getattr(module_cls, "delta_weight", None)):
        raise RegistryError(
            f"module kind {name!r} declares foldable: its module needs tap 'inner' and a delta_weight() method"
        )


def unregister_module_kind(name: str) -> ModuleKind:
    """Remove kind ``name`` (tests register toy kinds and remove them); returns its entry."""
    entry = get_module_kind(name)
    del _REGISTRY[name]
    return entry


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


def module_kinds_where(capability: Callable[[ModuleKind], object]) -> list[ModuleKind]:
    """The registered kinds (sorted by name) for which ``capability(kind)`` is true."""
    return [_REGISTRY[name] for name in list_module_kinds() if capability(_REGISTRY[name])]

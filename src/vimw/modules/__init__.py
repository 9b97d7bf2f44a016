"""Plug-in modules attached to a frozen backbone's sites, behind one interface.

Kinds: ``convpass`` (ViM's own, the default), ``lora`` and ``adapter``, one folder each
(``vimw/modules/<kind>/``: its config, module, stacked runner and, for lora, its fold
rule and PEFT mapping), registered with the capabilities they declare. Build one with
``ModuleSet.create(config, backbone.sites)`` and run it with
``backbone.forward_features(pixels, bypass=module_set.bypass)``.
"""

import importlib
import pkgutil

from vimw.modules.registry import (
    DEFAULT_MODULE_KIND,
    ModuleKind,
    get_module_kind,
    list_module_kinds,
    register_module_kind,
    unregister_module_kind,
)
from vimw.modules.config import BottleneckConfig, ModuleConfig, config_from_dict
from vimw.modules.base import BottleneckModule, ModuleSet, SiteModule
from vimw.modules.stacked import StackedModules
from vimw.modules.peft import PeftMapping

# The built-in kinds: importing a kind's folder registers it.
from vimw.modules.adapter import AdapterConfig, AdapterModule
from vimw.modules.convpass import ConvpassConfig, ConvpassModule, QuickGELU, quick_gelu
from vimw.modules.lora import LoRAConfig, LoRAModule


def _register_kind_folders() -> None:
    """Import every kind folder (each registers itself): a new folder needs no line here."""
    for folder in pkgutil.iter_modules(__path__):
        if folder.ispkg:
            importlib.import_module(f"{__name__}.{folder.name}")


_register_kind_folders()

__all__ = [
    "DEFAULT_MODULE_KIND",
    "AdapterConfig",
    "AdapterModule",
    "BottleneckConfig",
    "BottleneckModule",
    "ConvpassConfig",
    "ConvpassModule",
    "LoRAConfig",
    "LoRAModule",
    "ModuleConfig",
    "ModuleKind",
    "ModuleSet",
    "PeftMapping",
    "QuickGELU",
    "SiteModule",
    "StackedModules",
    "config_from_dict",
    "get_module_kind",
    "list_module_kinds",
    "quick_gelu",
    "register_module_kind",
    "unregister_module_kind",
]

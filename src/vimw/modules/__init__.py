"""Plug-in modules attached to a frozen backbone's sites, behind one interface.

Kinds: ``convpass`` (ViM's own, the default), ``lora`` and ``adapter``. Build one with
``ModuleSet.create(config, backbone.sites)`` and run it with
``backbone.forward_features(pixels, bypass=module_set.bypass)``.
"""

from vimw.modules.registry import (
    DEFAULT_MODULE_KIND,
    ModuleKind,
    get_module_kind,
    list_module_kinds,
    register_module_kind,
)
from vimw.modules.config import (
    AdapterConfig,
    BottleneckConfig,
    ConvpassConfig,
    LoRAConfig,
    ModuleConfig,
    config_from_dict,
)
from vimw.modules.base import BottleneckModule, ModuleSet, SiteModule
from vimw.modules.adapter import AdapterModule
from vimw.modules.convpass import ConvpassModule, QuickGELU, quick_gelu
from vimw.modules.lora import LoRAModule

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
    "QuickGELU",
    "SiteModule",
    "config_from_dict",
    "get_module_kind",
    "list_module_kinds",
    "quick_gelu",
    "register_module_kind",
]

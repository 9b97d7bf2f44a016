"""What a module kind declares to be exchanged with PEFT (``register_module_kind(..., peft=...)``).

The kind's folder knows its own side: PEFT's adapter type, the config's options and
the per-site tensor names. Which backbone layer a site is, PEFT's key prefixes and
its target matching are the same for every kind and live in ``vimw.interop.peft``.
Nothing here imports ``peft``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vimw.modules.config import ModuleConfig


@dataclass(frozen=True)
class PeftMapping:
    """A module kind <-> one PEFT adapter type.

    - ``peft_type``: PEFT's name of the type, as in ``adapter_config.json`` (``"LORA"``);
    - ``config_class``: the type's config class in the ``peft`` package (``"LoraConfig"``);
    - ``weight_names``: the per-site parameter names, the same in the vimw module and
      after the layer's path in PEFT's state (``lora_A.weight``);
    - ``to_peft(config)``: the PEFT config's keyword arguments (targets and source aside);
    - ``from_peft(raw, where)``: the vimw config (every site) for an ``adapter_config.json``,
      refusing with a ``VimwError`` any option the kind cannot represent exactly;
    - ``import_record(raw)``: what a zoo manifest keeps of that config.
    """

    peft_type: str
    config_class: str
    weight_names: tuple[str, ...]
    to_peft: Callable[[ModuleConfig], dict[str, Any]]
    from_peft: Callable[[Mapping[str, Any], str], ModuleConfig]
    import_record: Callable[[Mapping[str, Any]], dict[str, Any]]

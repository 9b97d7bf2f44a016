"""The lora kind <-> PEFT's LoRA (``peft_type`` ``LORA``), the kind's side of ``vimw.interop.peft``.

A vimw lora module adds ``(alpha / rank) * B A z`` to a projection's output, ``z`` being
its input: exactly what PEFT's LoRA layer computes on the same ``nn.Linear``
(``scaling = lora_alpha / r``), so the per-site tensors ``lora_A.weight`` and
``lora_B.weight`` map one to one. rsLoRA (``scale = alpha / sqrt(r)``) is read as the
vimw alpha with the same scale. Every other PEFT option changes what the layer
computes and is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vimw.errors import FormatError, VimwError
from vimw.modules.lora.config import LoRAConfig
from vimw.modules.peft import PeftMapping


def to_peft(config: LoRAConfig) -> dict[str, Any]:
    """``LoraConfig`` keyword arguments for ``config`` (targets and source aside)."""
    alpha: float | int = config.alpha
    if float(alpha).is_integer():
        alpha = int(alpha)  # PEFT types lora_alpha as int; the scale alpha / r is the same
    return {"r": config.rank, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none"}


def from_peft(raw: Mapping[str, Any], where: str) -> LoRAConfig:
    """The lora config (every site) equal to a PEFT LoRA ``adapter_config.json``."""
    _check_supported(raw, where)
    r = raw.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise FormatError(f"{where}: 'r' must be a positive integer, found {r!r}")
    lora_alpha = _number(raw, "lora_alpha", where)
    scale = lora_alpha / math.sqrt(r) if raw.get("use_rslora") else lora_alpha / r
    dropout = _number(raw, "lora_dropout", where) if raw.get("lora_dropout") is not None else 0.0
    return LoRAConfig(rank=r, alpha=float(scale * r), dropout=float(dropout))


def import_record(raw: Mapping[str, Any]) -> dict[str, Any]:
    """What a zoo manifest keeps of the imported adapter's config."""
    return {"r": raw.get("r"), "lora_alpha": raw.get("lora_alpha"), "use_rslora": bool(raw.get("use_rslora")),
            "target_modules": raw.get("target_modules")}


def _number(raw: Mapping[str, Any], key: str, where: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FormatError(f"{where}: {key!r} must be a finite number, found {value!r}")
    return value


def _check_supported(raw: Mapping[str, Any], where: str) -> None:
    """Refuse every PEFT option a vimw lora module cannot represent exactly."""
    unsupported = {
        "use_dora": bool(raw.get("use_dora")),
        "fan_in_fan_out": bool(raw.get("fan_in_fan_out")),
        "lora_bias": bool(raw.get("lora_bias")),
        "bias": raw.get("bias", "none") not in (None, "none"),
        "modules_to_save": bool(raw.get("modules_to_save")),
        "target_parameters": bool(raw.get("target_parameters")),
        "layer_replication": bool(raw.get("layer_replication")),
        "trainable_token_indices": bool(raw.get("trainable_token_indices")),
        "use_qalora": bool(raw.get("use_qalora")),
    }
    bad = [f"{k}={raw.get(k)!r}" for k, v in unsupported.items() if v]
    if bad:
        raise VimwError(f"{where}: PEFT options vimw's lora module cannot represent: {', '.join(bad)}")
    r, alpha = raw.get("r"), raw.get("lora_alpha")
    for pattern, default in (("rank_pattern", r), ("alpha_pattern", alpha)):
        values = raw.get(pattern) or {}
        if not isinstance(values, dict):
            raise FormatError(f"{where}: {pattern!r} must be an object")
        if any(v != default for v in values.values()):
            raise VimwError(f"{where}: {pattern} {values} gives sites different values; a vimw lora module has one rank and alpha")


LORA_PEFT = PeftMapping(
    peft_type="LORA",
    config_class="LoraConfig",
    weight_names=("lora_A.weight", "lora_B.weight"),
    to_peft=to_peft,
    from_peft=from_peft,
    import_record=import_record,
)

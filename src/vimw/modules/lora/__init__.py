"""The ``lora`` kind: its config, module (whose ``delta_weight()`` is its fold rule), stacked
runner and PEFT mapping.

Linear in what it taps at the ``inner`` tap, so it folds into the sublayer's final
projection and merges exactly; it maps one to one to PEFT's LoRA.
"""

from vimw.modules.lora.config import LoRAConfig
from vimw.modules.lora.module import LoRAModule
from vimw.modules.lora.peft import LORA_PEFT
from vimw.modules.lora.stacked import StackedLoRA
from vimw.modules.registry import register_module_kind

register_module_kind("lora", LoRAConfig, stacked=StackedLoRA, foldable=True, mergeable=True, peft=LORA_PEFT)(LoRAModule)

__all__ = ["LORA_PEFT", "LoRAConfig", "LoRAModule", "StackedLoRA"]

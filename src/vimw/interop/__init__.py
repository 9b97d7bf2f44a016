"""Interoperability with other libraries' formats (optional extras).

- ``peft``: export a ``lora`` zoo module on an HF CLIP backbone as a PEFT LoRA adapter,
  and import a PEFT LoRA adapter into a zoo (extra ``peft``).

Submodules import their optional dependency only when a function is called.
"""

from vimw.interop.peft import export_peft_lora, import_peft_lora

__all__ = ["export_peft_lora", "import_peft_lora"]

"""The ``convpass`` kind (ViM's own module, the default): its config, module and stacked runner.

Non-linear, so it neither folds into the backbone nor maps to PEFT; its parameters
average meaningfully within one config (mode ``merge``).
"""

from vimw.modules.convpass.config import ConvpassConfig
from vimw.modules.convpass.module import ConvpassModule, QuickGELU, quick_gelu
from vimw.modules.convpass.stacked import StackedConvpass
from vimw.modules.registry import register_module_kind

register_module_kind("convpass", ConvpassConfig, stacked=StackedConvpass, mergeable=True)(ConvpassModule)

__all__ = ["ConvpassConfig", "ConvpassModule", "QuickGELU", "StackedConvpass", "quick_gelu"]

"""The ``adapter`` kind (a bottleneck adapter): its config, module and stacked runner.

Non-linear, so it neither folds into the backbone nor maps to PEFT; its parameters
average meaningfully within one config (mode ``merge``).
"""

from vimw.modules.adapter.config import AdapterConfig
from vimw.modules.adapter.module import AdapterModule
from vimw.modules.adapter.stacked import StackedAdapter
from vimw.modules.registry import register_module_kind

register_module_kind("adapter", AdapterConfig, stacked=StackedAdapter, mergeable=True)(AdapterModule)

__all__ = ["AdapterConfig", "AdapterModule", "StackedAdapter"]

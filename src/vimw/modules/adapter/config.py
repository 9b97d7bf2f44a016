"""The adapter kind's config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vimw.modules.config import BottleneckConfig


@dataclass
class AdapterConfig(BottleneckConfig):
    """Bottleneck adapter parallel to each sublayer: down, GELU, up."""

    kind: ClassVar[str] = "adapter"

    hidden_dim: int = 16

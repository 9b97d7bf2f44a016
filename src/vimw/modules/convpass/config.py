"""The convpass kind's config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vimw.modules.config import BottleneckConfig


@dataclass
class ConvpassConfig(BottleneckConfig):
    """Convpass bypass (Jie & Deng 2022): 1x1 down, 3x3 conv, 1x1 up; d = 8 as in Convpass."""

    kind: ClassVar[str] = "convpass"

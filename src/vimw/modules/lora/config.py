"""The lora kind's config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from vimw.errors import FormatError
from vimw.modules.config import ModuleConfig, require_positive


@dataclass
class LoRAConfig(ModuleConfig):
    """Low-rank update of each site's final projection, scaled by ``alpha / rank``."""

    kind: ClassVar[str] = "lora"

    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.0

    def validate(self) -> None:
        super().validate()
        require_positive(self, "rank")
        if not math.isfinite(self.alpha):
            raise FormatError(f"lora: 'alpha' must be finite, got {self.alpha}")

    @property
    def scale(self) -> float:
        """The LoRA scaling ``alpha / rank``."""
        return self.alpha / self.rank

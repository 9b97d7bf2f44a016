"""LoRA on each site's final projection (1x1 conv or linear), tapping its input.

    delta(z) = (alpha / rank) * B A dropout(z)

It is linear in ``z``, so without dropout it equals multiplying by ``delta_weight()``
and can be folded exactly into the projection's weights (Hu et al. 2021). A is
Kaiming-uniform and B zero, as in PEFT, so a new module adds exactly zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vimw.sites import Site
from vimw.modules._channels import linear_over_channels
from vimw.modules.base import SiteModule
from vimw.modules.lora.config import LoRAConfig


class LoRAModule(SiteModule):
    """LoRA on one site's final projection: ``scale * B A z`` added to its output."""

    tap = "inner"

    def __init__(self, site: Site, config: LoRAConfig) -> None:
        super().__init__(site, config)
        self.scale = config.scale
        self.dropout = nn.Dropout(config.dropout)
        self.lora_A = nn.Linear(site.inner_channels, config.rank, bias=False)
        self.lora_B = nn.Linear(config.rank, site.out_channels, bias=False)
        self.reset_parameters()

    def output_projection(self) -> nn.Linear:
        return self.lora_B

    def reset_parameters(self) -> None:
        """PEFT's initialisation: Kaiming-uniform A, zero B (a new module adds nothing)."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        layout = self.site.layout
        low = linear_over_channels(self.dropout(z), self.lora_A, layout)
        return self.scale * linear_over_channels(low, self.lora_B, layout)

    def delta_weight(self) -> torch.Tensor:
        """The dense ``out x inner`` update ``scale * B @ A`` (for merging into the projection)."""
        return self.scale * (self.lora_B.weight @ self.lora_A.weight)

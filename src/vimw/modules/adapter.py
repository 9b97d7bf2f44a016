"""Bottleneck adapter parallel to each sublayer (Houlsby/AdapterHub style, tap ``input``).

    out = W_up dropout(GELU(W_down pool(h) + b_down)) + b_up

For strided feature-map sites the input is first average-pooled with the site's
stride; ``ceil_mode`` makes an odd side round up exactly like the block's padded
convolution (ceil(H / s)). The up-projection starts at zero, so a new adapter is a no-op.
"""

from __future__ import annotations

import torch
from torch import nn

from vimw.sites import Site
from vimw.modules._channels import linear_over_channels, require_unit_stride_for_tokens
from vimw.modules.base import SiteModule
from vimw.modules.config import AdapterConfig
from vimw.modules.registry import register_module_kind


@register_module_kind("adapter", AdapterConfig)
class AdapterModule(SiteModule):
    """A bottleneck adapter at one site (down, GELU, up; up starts at zero)."""

    tap = "input"

    def __init__(self, site: Site, config: AdapterConfig) -> None:
        super().__init__(site, config)
        require_unit_stride_for_tokens(site, self.kind)
        self.pool = (
            nn.AvgPool2d(site.stride, stride=site.stride, ceil_mode=True) if site.stride > 1 else nn.Identity()
        )
        self.down = nn.Linear(site.in_channels, config.hidden_dim)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(config.dropout)
        self.up = nn.Linear(config.hidden_dim, site.out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier down-projection, zero up-projection: a new adapter adds nothing."""
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = self.site.layout
        z = self.act(linear_over_channels(self.pool(x), self.down, layout))
        return linear_over_channels(self.dropout(z), self.up, layout)

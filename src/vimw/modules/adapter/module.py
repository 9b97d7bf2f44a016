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
from vimw.modules._channels import linear_over_channels
from vimw.modules.base import BottleneckModule
from vimw.modules.adapter.config import AdapterConfig


class AdapterModule(BottleneckModule):
    """A bottleneck adapter at one site (down, GELU, up; up starts at zero)."""

    tap = "input"

    def __init__(self, site: Site, config: AdapterConfig) -> None:
        super().__init__(site, config)
        self.pool = (
            nn.AvgPool2d(site.stride, stride=site.stride, ceil_mode=True) if site.stride > 1 else nn.Identity()
        )
        self.act = nn.GELU()
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = self.site.layout
        z = self.act(linear_over_channels(self.pool(x), self.down, layout))
        return linear_over_channels(self.dropout(z), self.up, layout)

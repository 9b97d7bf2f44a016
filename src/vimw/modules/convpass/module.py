"""Convpass (Jie & Deng 2022), the module ViM uses (Feng et al. 2023): a convolutional bypass parallel to each sublayer.

    out = W_up QuickGELU(Conv3x3(QuickGELU(W_down h + b_down))) + b_up

On feature maps the 3x3 conv carries the site's stride, so the output matches the
block's output shape. On tokens the conv runs on the square patch grid, and a CLS
token is convolved as a 1x1 map (padding 1), so only the centre tap touches it and it
never mixes with the patches. Initialised as a no-op: the up-projection is zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vimw.sites import Site
from vimw.errors import BackboneMismatchError
from vimw.modules._channels import linear_over_channels
from vimw.modules.base import BottleneckModule
from vimw.modules.convpass.config import ConvpassConfig


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's GELU approximation, x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


class QuickGELU(nn.Module):
    """CLIP's GELU approximation as a module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quick_gelu(x)


def _identity_centre_(conv: nn.Conv2d) -> None:
    """Zero a square conv except 1 at the centre tap of each channel's own filter."""
    centre = conv.kernel_size[0] // 2
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, centre, centre].copy_(torch.eye(conv.out_channels, conv.in_channels))
        conv.bias.zero_()


class ConvpassModule(BottleneckModule):
    """Convpass at one site: 1x1 down, 3x3 conv (the site's stride), 1x1 up."""

    tap = "input"

    def __init__(self, site: Site, config: ConvpassConfig) -> None:
        super().__init__(site, config)
        d = config.hidden_dim
        self.conv = nn.Conv2d(d, d, 3, stride=site.stride, padding=1)
        self.act = QuickGELU()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Convpass' initialisation: Xavier down, identity-centre conv, zero up (a no-op)."""
        super().reset_parameters()
        _identity_centre_(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = self.site.layout
        z = self.act(linear_over_channels(x, self.down, layout))
        z = self.conv(z) if layout == "nchw" else self.conv_tokens(z)
        z = self.dropout(self.act(z))
        return linear_over_channels(z, self.up, layout)

    def conv_tokens(self, z: torch.Tensor) -> torch.Tensor:
        """The 3x3 conv on tokens ``B x L x d``: patch grid, and CLS alone as a 1x1 map."""
        if self.site.layout == "nlc":
            return self.conv_grid(z)
        cls, patches = z[:, :1], z[:, 1:]
        return torch.cat([self.conv_grid(cls), self.conv_grid(patches)], dim=1)

    def conv_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """The 3x3 conv on tokens laid out as their square grid."""
        batch, length, channels = tokens.shape
        side = _grid_side(length, self.site)
        grid = tokens.transpose(1, 2).reshape(batch, channels, side, side)
        return self.conv(grid).flatten(2).transpose(1, 2)


def _grid_side(length: int, site: Site) -> int:
    """Side of the square grid holding ``length`` tokens."""
    side = math.isqrt(length)
    if side * side != length:
        raise BackboneMismatchError(
            f"convpass at site {site.name}: {length} patch tokens do not form a square grid"
        )
    return side

"""Deterministic bypass modules for the HF backbone tests (CLIP and the other families)."""

from __future__ import annotations

import torch
from torch import nn


class TapLinear(nn.Module):
    """A deterministic module: a linear map (zero or random) at a given tap."""

    def __init__(self, cin: int, cout: int, tap: str, zero: bool) -> None:
        super().__init__()
        self.tap = tap
        self.proj = nn.Linear(cin, cout)
        with torch.no_grad():
            if zero:
                self.proj.weight.zero_()
                self.proj.bias.zero_()
            else:
                self.proj.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)


def bypass_modules(sites, tap: str, zero: bool) -> dict[str, nn.Module]:
    """One TapLinear per site, sized for the tap ("inner" reads the site's inner width)."""
    return {
        s.name: TapLinear(s.inner_channels if tap == "inner" else s.in_channels, s.out_channels, tap, zero)
        for s in sites
    }

"""Bottleneck adapters of one site run as one pair of projections: down-projections
concatenated, up-projections concatenated and gate-scaled."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from vimw.modules.base import SiteModule
from vimw.modules.stacked import StackedModules, cat_scaled, gated_bias


class StackedAdapter(StackedModules):
    """Bottleneck adapters of one site run as one batched pair of projections."""

    names = ("down.weight", "down.bias", "up.weight", "up.bias")

    @classmethod
    def accepts(cls, modules: Sequence[SiteModule]) -> bool:
        # ``apply`` runs the exact GELU; a module whose activation was swapped runs the loop.
        return all(isinstance(m.act, nn.GELU) and m.act.approximate == "none" for m in modules)

    def prepare(self, w: dict[str, torch.Tensor], gates: torch.Tensor) -> dict[str, torch.Tensor]:
        n, k, cin = w["down.weight"].shape
        return {"down": w["down.weight"].reshape(n * k, cin), "down_bias": w["down.bias"].reshape(n * k),
                "up": cat_scaled(w["up.weight"], gates), "up_bias": gated_bias(w["up.bias"], gates)}

    def hidden(self, p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        stride = self.site.stride
        if stride > 1:
            h = F.avg_pool2d(h, stride, stride=stride, ceil_mode=True)
        return F.gelu(self._channels(h, p["down"], p["down_bias"]))

    def project(self, p: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        return self._channels(z, p["up"], p["up_bias"])

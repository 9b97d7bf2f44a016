"""Convpass modules of one site run as one grouped computation.

The N down-projections are one 1x1 convolution (``N*d`` output channels), the N 3x3
convolutions one grouped convolution (``groups=N``), and the N up-projections one 1x1
convolution over the ``N*d`` channels whose weight is ``[g_1 W_up,1 | ... | g_N W_up,N]``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from vimw.modules.convpass.module import _grid_side
from vimw.modules.stacked import StackedModules, cat_scaled, gated_bias

# QuickGELU(x) = x * sigmoid(1.702 x) = silu(1.702 x) / 1.702: the factors are folded into
# the weights around each activation (``StackedConvpass.prepare``), so the batched
# path runs one silu per activation.
_QUICK_GELU_SLOPE = 1.702


def _silu(z: torch.Tensor) -> torch.Tensor:
    """silu, in place when no gradient is needed: one pass over the ``N*d``-channel tensor
    and no fresh allocation (page faults and cache misses made the batched path slower
    than the loop on CPU)."""
    return F.silu(z, inplace=not (torch.is_grad_enabled() and z.requires_grad))


class StackedConvpass(StackedModules):
    """Convpass modules of one site run as one grouped convolution."""

    names = ("down.weight", "down.bias", "conv.weight", "conv.bias", "up.weight", "up.bias")

    def prepare(self, w: dict[str, torch.Tensor], gates: torch.Tensor) -> dict[str, torch.Tensor]:
        # u1 = 1.702 (W_d h + b_d); u2 = W_c silu(u1) + 1.702 b_c = 1.702 (W_c QuickGELU(W_d h + b_d) + b_c);
        # out = (W_up / 1.702) silu(u2) + b_up: the modules' QuickGELUs exactly, up to rounding.
        n, d, cin = w["down.weight"].shape
        slope = _QUICK_GELU_SLOPE
        return {
            "down": w["down.weight"].reshape(n * d, cin) * slope,
            "down_bias": w["down.bias"].reshape(n * d) * slope,
            "conv": w["conv.weight"].reshape(n * d, *w["conv.weight"].shape[2:]),
            "conv_bias": w["conv.bias"].reshape(n * d) * slope,
            "up": cat_scaled(w["up.weight"], gates / slope),
            "up_bias": gated_bias(w["up.bias"], gates),
        }

    def hidden(self, p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        z = _silu(self._channels(h, p["down"], p["down_bias"]))
        groups = p["conv"].shape[0] // p["conv"].shape[1]  # one group per module
        if self.layout == "nchw":
            z = F.conv2d(z, p["conv"], p["conv_bias"], stride=self.site.stride, padding=1, groups=groups)
        else:
            z = self._conv_tokens(z, p["conv"], p["conv_bias"], groups)
        return _silu(z)

    def project(self, p: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        return self._channels(z, p["up"], p["up_bias"])

    def _conv_tokens(self, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> torch.Tensor:
        def grid(tokens: torch.Tensor) -> torch.Tensor:
            batch, length, channels = tokens.shape
            side = _grid_side(length, self.site)
            maps = tokens.transpose(1, 2).reshape(batch, channels, side, side)
            out = F.conv2d(maps, weight, bias, padding=1, groups=groups)
            return out.flatten(2).transpose(1, 2)

        if self.layout == "nlc":
            return grid(z)
        return torch.cat([grid(z[:, :1]), grid(z[:, 1:])], dim=1)

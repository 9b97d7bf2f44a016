"""Channel-wise linear maps shared by the module kinds, for feature maps and tokens alike.

Projections are stored as ``nn.Linear`` (2-D weights, as in PEFT and Convpass) so a
module's saved tensors have the same shapes whatever the site's layout.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from vimw.sites import Site
from vimw.errors import BackboneMismatchError


def linear_over_channels(x: torch.Tensor, layer: nn.Linear, layout: str) -> torch.Tensor:
    """Apply ``layer`` to the channel axis: dim 1 for ``nchw``, the last dim for tokens."""
    if layout == "nchw":
        return F.conv2d(x, layer.weight[:, :, None, None], layer.bias)
    return layer(x)


def require_unit_stride_for_tokens(site: Site, kind: str) -> None:
    """Token sites keep their length; a strided token site has no defined module shape."""
    if site.layout != "nchw" and site.stride != 1:
        raise BackboneMismatchError(
            f"{kind} at site {site.name}: token layout {site.layout!r} with stride {site.stride} is not supported"
        )

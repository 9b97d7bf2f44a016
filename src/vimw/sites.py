"""The site contract: the one meeting point of backbones and plug-in modules.

A *site* is a place in a frozen backbone where a module attaches in parallel to a
sublayer, ``y = sublayer(h) + m(h)`` (ViM, Feng et al. 2023). Backbones publish their
sites; module kinds read them to size themselves. Neither package imports the other:
both import this file, and the ``bypass`` mapping (site name -> module) is passed
explicitly on every forward call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # no torch import at run time: the contract is plain data
    from torch import nn

Layout = Literal["nchw", "nlc", "nlc_cls"]
Tap = Literal["input", "inner"]
Bypass = Mapping[str, "nn.Module"]

LAYOUTS: tuple[str, ...] = ("nchw", "nlc", "nlc_cls")


@dataclass(frozen=True)
class Site:
    """Everything a plug-in module needs to know about one attachment point.

    ``in_channels``/``out_channels``/``stride`` describe the ``input`` tap (the
    sublayer's input and output); ``inner_channels`` is the input width of the
    sublayer's final projection, used by ``inner``-tap modules (whose output has
    ``out_channels`` channels at the output resolution). ``layout`` is ``nchw`` for
    feature maps, ``nlc`` for tokens, ``nlc_cls`` for tokens whose first one is a
    class token followed by a square patch grid.
    """

    name: str
    block: int
    in_channels: int
    out_channels: int
    stride: int
    layout: Layout
    inner_channels: int
    kind: str = "block"  # what the sublayer is: "block" (CNN), "attn" or "mlp" (ViT)

    def to_dict(self) -> dict:
        """The site as a JSON object."""
        return asdict(self)

"""Task heads: what sits on top of the (plugged) backbone for one task.

A head reads what it needs from the backbone through ``TaskModel`` and returns logits:
``N x C`` for image-level tasks (classification, rotation prediction) and
``N x C x H x W`` at the input resolution for dense tasks (segmentation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from vimw.backbones.base import Backbone, Site
from vimw.data.kinds import DENSE_KINDS, KINDS
from vimw.errors import FormatError

IMAGE_KINDS = tuple(k for k in KINDS if k not in DENSE_KINDS)


@dataclass(frozen=True)
class HeadConfig:
    """Enough to rebuild a head before loading its weights (saved as JSON)."""

    kind: str
    num_classes: int
    in_dim: int = 0
    blocks: tuple[int, ...] = field(default_factory=tuple)
    channels: tuple[int, ...] = field(default_factory=tuple)
    layouts: tuple[str, ...] = field(default_factory=tuple)
    width: int = 64

    def to_dict(self) -> dict:
        """The config as a JSON object."""
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict) -> "HeadConfig":
        """A config from ``to_dict``'s output."""
        try:
            return cls(
                kind=str(payload["kind"]),
                num_classes=int(payload["num_classes"]),
                in_dim=int(payload.get("in_dim", 0)),
                blocks=tuple(int(b) for b in payload.get("blocks", ())),
                channels=tuple(int(c) for c in payload.get("channels", ())),
                layouts=tuple(str(x) for x in payload.get("layouts", ())),
                width=int(payload.get("width", 64)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"invalid head config {payload!r}: {exc}") from exc


class LinearHead(nn.Module):
    """Linear classifier on pooled features."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.fc = nn.Linear(config.in_dim, config.num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)


def tokens_to_map(hidden: torch.Tensor, layout: str) -> torch.Tensor:
    """Feature map ``N x C x h x w`` from an NCHW map or a square token grid."""
    if layout == "nchw":
        return hidden
    if layout == "nlc_cls":
        hidden = hidden[:, 1:]
    side = int(round(hidden.shape[1] ** 0.5))
    return hidden.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], side, side)


class DenseHead(nn.Module):
    """A light FPN-style segmentation head: project a fine and a coarse block, add, upsample.

    Reading the last block as well as a stride-8 one lets modules at every depth shape
    the dense prediction.
    """

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.lateral = nn.ModuleList(nn.Conv2d(c, config.width, 1) for c in config.channels)
        self.classifier = nn.Sequential(
            nn.GELU(), nn.Conv2d(config.width, config.width, 3, padding=1), nn.GELU(),
            nn.Conv2d(config.width, config.num_classes, 1),
        )

    def forward(self, intermediates: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        maps = [tokens_to_map(h, layout) for h, layout in zip(intermediates, self.config.layouts)]
        target = maps[0].shape[-2:]
        fused = sum(
            nn.functional.interpolate(lat(m), size=target, mode="bilinear", align_corners=False)
            for lat, m in zip(self.lateral, maps)
        )
        return nn.functional.interpolate(self.classifier(fused), size=size, mode="bilinear", align_corners=False)


def dense_blocks(backbone: Backbone) -> tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...]]:
    """Blocks a dense head reads: the last one at >= 1/8 of the input, and the last block.

    Found by one probe forward at the backbone's input size, so it works for any
    backbone honouring the site contract.
    """
    size = backbone.preprocess.size
    probe = torch.zeros(1, 3, size, size, device=next(backbone.parameters()).device)
    with torch.no_grad():
        hidden = backbone.forward_intermediates(probe, None, range(backbone.num_blocks))
    last_site: dict[int, Site] = {s.block: s for s in backbone.sites}
    fine = 0
    for index, h in enumerate(hidden):
        side = h.shape[-1] if last_site[index].layout == "nchw" else int(round((h.shape[1] - 1) ** 0.5))
        if side * 8 >= size:
            fine = index
    chosen = tuple(sorted({fine, backbone.num_blocks - 1}))
    channels = tuple(last_site[b].out_channels for b in chosen)
    layouts = tuple(last_site[b].layout for b in chosen)
    return chosen, channels, layouts


def head_config_for(backbone: Backbone, kind: str, num_classes: int) -> HeadConfig:
    """The head a task of ``kind`` with ``num_classes`` needs on ``backbone``."""
    if kind in IMAGE_KINDS:
        return HeadConfig(kind=kind, num_classes=num_classes, in_dim=backbone.feature_dim)
    if kind in DENSE_KINDS:
        blocks, channels, layouts = dense_blocks(backbone)
        return HeadConfig(kind=kind, num_classes=num_classes, blocks=blocks, channels=channels, layouts=layouts)
    raise FormatError(f"unknown task kind {kind!r}; known: {IMAGE_KINDS + DENSE_KINDS}")


def build_head(config: HeadConfig) -> nn.Module:
    """The head module ``config`` describes."""
    return DenseHead(config) if config.kind in DENSE_KINDS else LinearHead(config)

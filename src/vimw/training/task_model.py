"""A frozen backbone + an optional plug-in + a task head, as one ``nn.Module``.

The plug-in is anything with a ``bypass`` mapping (a zoo module, an aggregation over
the zoo, or nothing for a linear probe). Only the plug-in and the head train unless the
backbone itself was unfrozen (full fine-tuning baseline).
"""

from __future__ import annotations

import torch
from torch import nn

from vimw.backbones.base import Backbone
from vimw.training.heads import DENSE_KINDS, HeadConfig, build_head


class TaskModel(nn.Module):
    def __init__(self, backbone: Backbone, head_config: HeadConfig, plugin: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.plugin = plugin
        self.head_config = head_config
        self.head = build_head(head_config)

    @property
    def kind(self) -> str:
        return self.head_config.kind

    def bypass(self):
        return self.plugin.bypass if self.plugin is not None else None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.kind in DENSE_KINDS:
            hidden = self.backbone.forward_intermediates(pixels, self.bypass(), self.head_config.blocks)
            return self.head(hidden, pixels.shape[-2:])
        return self.head(self.backbone.forward_features(pixels, self.bypass()))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The tensors that training changes (what a checkpoint must hold)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in names}

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

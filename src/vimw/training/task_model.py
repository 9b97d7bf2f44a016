"""A frozen backbone + an optional plug-in + a task head, as one ``nn.Module``.

The plug-in is anything with a ``bypass`` mapping (a zoo module, an aggregation over
the zoo, or nothing for a linear probe). Only the plug-in and the head train unless the
backbone itself was unfrozen (full fine-tuning baseline).

``enable_prefix_cache`` attaches a ``PrefixCache`` (frozen prefix computed once per
image, see ``vimw.training.prefix_cache``); ``fit`` and ``predict_logits`` then call
``forward_cached(images, index)`` with raw images and their indices instead of
``forward(pixels)``. The logits are the same.
"""

from __future__ import annotations

import torch
from torch import nn

from vimw.backbones.base import Backbone
from vimw.data.kinds import DENSE_KINDS
from vimw.training.heads import HeadConfig, build_head


class TaskModel(nn.Module):
    """A frozen backbone, an optional plug-in (a module or a zoo aggregate) and a task head."""

    def __init__(self, backbone: Backbone, head_config: HeadConfig, plugin: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.plugin = plugin
        self.head_config = head_config
        self.head = build_head(head_config)
        self.prefix_cache = None  # a PrefixCache, set by enable_prefix_cache

    def enable_prefix_cache(self, max_bytes: int | None = None):
        """Cache the frozen prefix (before the plug-in's first block); ``None`` if not applicable."""
        from vimw.training.prefix_cache import DEFAULT_MAX_BYTES, PrefixCache, prefix_start

        start = prefix_start(self.backbone, self.plugin)
        if start == 0 or not self.backbone.frozen or self.kind in DENSE_KINDS:
            self.prefix_cache = None
        else:
            limit = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
            self.prefix_cache = PrefixCache(self.backbone, start, max_bytes=limit)
        return self.prefix_cache

    def can_use_prefix_cache(self) -> bool:
        """Whether the prefix cache is on and valid for this forward pass."""
        cache = self.prefix_cache
        return (
            cache is not None
            and cache.backbone is self.backbone
            and self.backbone.frozen
            and not any(p.requires_grad for p in self.backbone.parameters())
            and self.kind not in DENSE_KINDS
        )

    def forward_cached(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Logits of raw ``images[index]``, reading the frozen prefix from the cache."""
        if not self.can_use_prefix_cache():
            from vimw.errors import VimwError

            raise VimwError("the prefix cache is not usable for this model (not enabled, backbone not frozen, or dense head)")
        cache = self.prefix_cache
        hidden = cache.fetch(images, index)
        if not cache.pooled:
            hidden = self.backbone.pool(self.backbone.forward_blocks(hidden, self.bypass(), start=cache.start))
        return self.head(hidden)

    @property
    def kind(self) -> str:
        """The task kind the head predicts."""
        return self.head_config.kind

    def bypass(self):
        """The plug-in's site mapping for the backbone (``None`` without a plug-in)."""
        return self.plugin.bypass if self.plugin is not None else None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.kind in DENSE_KINDS:
            hidden = self.backbone.forward_intermediates(pixels, self.bypass(), self.head_config.blocks)
            return self.head(hidden, pixels.shape[-2:])
        return self.head(self.backbone.forward_features(pixels, self.bypass()))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that train (head, plug-in; the backbone when unfrozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self, lr: float, group_lrs: dict[str, float] | None = None) -> list[dict]:
        """AdamW groups: those the plug-in names (rate from ``group_lrs`` by name, else ``lr``)
        and one ``"main"`` group with every other trainable parameter at ``lr``."""
        group_lrs = group_lrs or {}
        named = self.plugin.parameter_groups() if hasattr(self.plugin, "parameter_groups") else []
        groups = [{**g, "lr": group_lrs.get(g["name"]) or lr} for g in named]
        taken = {id(p) for g in groups for p in g["params"]}
        rest = [p for p in self.trainable_parameters() if id(p) not in taken]
        return ([{"name": "main", "params": rest, "lr": lr}] if rest else []) + groups

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The tensors that training changes (what a checkpoint must hold)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in names}

    def num_trainable(self) -> int:
        """The number of trainable weights."""
        return sum(p.numel() for p in self.trainable_parameters())

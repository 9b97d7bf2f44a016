"""One backbone pass for a batch whose rows belong to different downstream models.

The vision analogue of multi-LoRA batching (S-LoRA, LoRAX): the rows of each model sit
together in the batch, and at every site the routed plug-in runs each model's own site
module (its gated zoo modules, through the stacked runners of the batched path, or its
single module) on that model's rows only, putting the outputs back in row order. A
model with no module at a site adds zeros there. The frozen backbone runs once for the
whole batch; each model's head then reads its own rows of the pooled features.

A backbone adds a site's plug-in either to the sublayer's output (``tap = "input"``) or
to its final projection's output (``"inner"``), one tap per site and call; models are
therefore grouped by tap (:func:`tap_of`) and each group is one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vimw.backbones.base import Backbone
from vimw.sites import Bypass


def tap_of(bypass: Bypass | None) -> str | None:
    """The tap every module of ``bypass`` uses (``None`` without modules: fits any pass)."""
    taps = {getattr(module, "tap", "input") for module in (bypass or {}).values()}
    if len(taps) > 1:  # a single model never mixes taps (ZooAggregate refuses it)
        raise ValueError(f"a plug-in with modules at several taps {sorted(taps)}")
    return taps.pop() if taps else None


def _zeros_like_rows(template: torch.Tensor, rows: int) -> torch.Tensor:
    """Zeros shaped like ``template`` with ``rows`` rows, in its memory format (channels-last kept)."""
    zeros = template.new_zeros((rows, *template.shape[1:]))
    if template.dim() == 4 and template.is_contiguous(memory_format=torch.channels_last):
        zeros = zeros.contiguous(memory_format=torch.channels_last)
    return zeros


class RoutedSite(nn.Module):
    """The plug-in at one site of a mixed batch: each model's own module on its own rows."""

    def __init__(self, tap: str, parts: Sequence[tuple[slice, nn.Module | None]]) -> None:
        super().__init__()
        self.tap = tap
        # Plain attributes: the models hold the modules; this object lives for one pass.
        object.__setattr__(self, "parts", list(parts))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        outputs = [None if module is None else module(h[rows]) for rows, module in self.parts]
        # A gated site may answer a 0-dim zero (no active gate): it adds nothing to its rows.
        template = next((o for o in outputs if o is not None and o.dim() > 0), None)
        if template is None:
            return h.new_zeros(())
        if len(outputs) == 1:
            return template
        pieces = [o if o is not None and o.dim() > 0 else _zeros_like_rows(template, rows.stop - rows.start)
                  for o, (rows, _) in zip(outputs, self.parts)]
        return torch.cat(pieces)


def routed_bypass(bypasses: Sequence[Bypass | None], rows: Sequence[int], tap: str) -> dict[str, RoutedSite]:
    """The bypass for one pass over consecutive row blocks (``rows[i]`` rows use ``bypasses[i]``)."""
    bounds, start = [], 0
    for count in rows:
        bounds.append(slice(start, start + count))
        start += count
    sites: dict[str, None] = {}
    for bypass in bypasses:
        sites.update(dict.fromkeys(bypass or {}))
    return {site: RoutedSite(tap, [(b, (bp or {}).get(site)) for b, bp in zip(bounds, bypasses)])
            for site in sites}


def mixed_features(backbone: Backbone, pixels: torch.Tensor, bypasses: Sequence[Bypass | None],
                   rows: Sequence[int]) -> torch.Tensor:
    """Pooled features of ``pixels`` whose consecutive row blocks use their own plug-ins, in one pass.

    Every bypass must use one tap (or none); the rows of block ``i`` get exactly what
    ``backbone.forward_features(pixels[block i], bypasses[i])`` gives them.
    """
    taps = {tap_of(b) for b in bypasses} - {None}
    if len(taps) > 1:
        raise ValueError(f"one pass cannot mix taps {sorted(taps)}; group the models by tap first")
    if not taps:
        return backbone.forward_features(pixels)
    if len(bypasses) == 1:
        return backbone.forward_features(pixels, bypasses[0])
    return backbone.forward_features(pixels, routed_bypass(bypasses, rows, taps.pop()))


__all__ = ["RoutedSite", "mixed_features", "routed_bypass", "tap_of"]

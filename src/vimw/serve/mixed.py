"""One backbone pass for a batch whose rows belong to different downstream models.

The vision analogue of multi-LoRA batching (S-LoRA, LoRAX): the rows of each model sit
together in the batch, and at every site the routed plug-in runs each model's own site
module (its gated zoo modules, through the stacked runners of the batched path, or its
single module) on that model's rows only, putting the outputs back in row order. A
model with no module at a site adds zeros there. The frozen backbone runs once for the
whole batch; each model's head then reads its own rows of the pooled features.

Models aggregated over the same zoo modules share more: their gated sum at a site is
``project_j(hidden(h))``, where ``hidden`` (the modules' down-projections and 3x3
convolutions, stacked) does not depend on the gates. Their rows then run ``hidden``
together, once, and each model applies only its own gate-scaled last projection
(:class:`SharedSite`). At one image per model this turns 16 models' 16 grouped
convolutions per site into one (``benchmarks/results/serve.md``).

A backbone adds a site's plug-in either to the sublayer's output (``tap = "input"``) or
to its final projection's output (``"inner"``), one tap per site and call; models are
therefore grouped by tap (:func:`tap_of`) and each group is one pass.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vimw.aggregation import ZooAggregate
from vimw.aggregation.batched import stack_modules
from vimw.backbones.base import Backbone
from vimw.modules import StackedModules
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


@dataclass(frozen=True)
class SharedSite:
    """One model's plug-in at one site as a stacked runner shared with other models, and its own
    gate-folded matrices: rows of models with the same ``key`` share the runner's ``hidden``."""

    key: tuple
    runner: StackedModules
    prepared: dict


def _splits(runner: StackedModules | None) -> bool:
    """Whether the runner's kind splits ``apply`` in two and folds the gates as given (LoRA scales them)."""
    kind = type(runner)
    return runner is not None and kind.hidden is not StackedModules.hidden and kind.__call__ is StackedModules.__call__


def shared_sites(plugin: nn.Module | None, runners: MutableMapping) -> dict[str, SharedSite]:
    """The sites where ``plugin`` (a gated zoo aggregate) can share a hidden pass with other models.

    ``runners`` holds the stacked runners by site and modules, shared by every model that
    uses them (modules loaded once per zoo, so equal modules are the same objects). Not
    for ``merge`` (its parameters differ per model) or when the aggregate runs the loop.
    """
    if not isinstance(plugin, ZooAggregate) or plugin.mode == "merge" or not plugin.batched:
        return {}
    with torch.no_grad():
        gates = plugin.gates().detach()  # frozen at serving time
    out = {}
    for row, site in enumerate(plugin.site_names):
        members = [i for i, expert in enumerate(plugin.experts) if site in expert]
        modules = [plugin.experts[i][site] for i in members]
        key = (site, tuple(id(m) for m in modules))  # the runner keeps its modules alive: ids stay unique
        runner = runners.get(key)
        if runner is None:
            runner = stack_modules(modules)
            if runner is None:
                continue
            runners[key] = runner
        if _splits(runner):
            with torch.no_grad():
                out[site] = SharedSite(key, runner, runner.prepare(runner.stacks(), gates[row, members]))
    return out


class RoutedSite(nn.Module):
    """The plug-in at one site of a mixed batch: each model's own module on its own rows.

    ``parts`` lists, per block of rows, the model's site module (or ``None``) and its
    :class:`SharedSite` (or ``None``); blocks whose shared sites have one key run one hidden pass.
    """

    def __init__(self, tap: str, parts: Sequence[tuple[slice, nn.Module | None, SharedSite | None]]) -> None:
        super().__init__()
        self.tap = tap
        # Plain attributes: the models hold the modules; this object lives for one pass.
        object.__setattr__(self, "parts", list(parts))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor | None] = [None] * len(self.parts)
        together: dict[tuple, list[int]] = {}
        for i, (rows, module, shared) in enumerate(self.parts):
            if shared is not None:
                together.setdefault(shared.key, []).append(i)
            elif module is not None:
                outputs[i] = module(h[rows])
        for members in together.values():
            if len(members) == 1:  # alone: its own path, exactly what the model computes by itself
                rows, module, _ = self.parts[members[0]]
                outputs[members[0]] = module(h[rows])
                continue
            self._run_shared(h, members, outputs)
        # A gated site may answer a 0-dim zero (no active gate): it adds nothing to its rows.
        template = next((o for o in outputs if o is not None and o.dim() > 0), None)
        if template is None:
            return h.new_zeros(())
        if len(outputs) == 1:
            return template
        pieces = [o if o is not None and o.dim() > 0 else _zeros_like_rows(template, rows.stop - rows.start)
                  for o, (rows, _, _) in zip(outputs, self.parts)]
        return torch.cat(pieces)

    def _run_shared(self, h: torch.Tensor, members: list[int], outputs: list) -> None:
        """One hidden pass over the rows of ``members``, then each one's own last projection."""
        bounds = [self.parts[i][0] for i in members]
        contiguous = all(a.stop == b.start for a, b in zip(bounds, bounds[1:]))
        rows = h[bounds[0].start:bounds[-1].stop] if contiguous else torch.cat([h[b] for b in bounds])
        first = self.parts[members[0]][2]
        z = first.runner.hidden(first.prepared, rows)
        start = 0
        for i, b in zip(members, bounds):
            count = b.stop - b.start
            outputs[i] = first.runner.project(self.parts[i][2].prepared, z[start:start + count])
            start += count


def routed_bypass(bypasses: Sequence[Bypass | None], rows: Sequence[int], tap: str,
                  shared: Sequence[dict[str, SharedSite] | None] | None = None) -> dict[str, RoutedSite]:
    """The bypass for one pass over consecutive row blocks (``rows[i]`` rows use ``bypasses[i]``,
    and ``shared[i]``'s sites where given)."""
    bounds, start = [], 0
    for count in rows:
        bounds.append(slice(start, start + count))
        start += count
    shared = shared or [None] * len(bypasses)
    sites: dict[str, None] = {}
    for bypass in bypasses:
        sites.update(dict.fromkeys(bypass or {}))
    return {site: RoutedSite(tap, [(b, (bp or {}).get(site), (sh or {}).get(site))
                                   for b, bp, sh in zip(bounds, bypasses, shared)])
            for site in sites}


def mixed_features(backbone: Backbone, pixels: torch.Tensor, bypasses: Sequence[Bypass | None],
                   rows: Sequence[int], shared: Sequence[dict[str, SharedSite] | None] | None = None) -> torch.Tensor:
    """Pooled features of ``pixels`` whose consecutive row blocks use their own plug-ins, in one pass.

    Every bypass must use one tap (or none); the rows of block ``i`` get what
    ``backbone.forward_features(pixels[block i], bypasses[i])`` gives them (up to float
    rounding where a shared hidden pass covers other rows too).
    """
    taps = {tap_of(b) for b in bypasses} - {None}
    if len(taps) > 1:
        raise ValueError(f"one pass cannot mix taps {sorted(taps)}; group the models by tap first")
    if not taps:
        return backbone.forward_features(pixels)
    if len(bypasses) == 1:
        return backbone.forward_features(pixels, bypasses[0])
    return backbone.forward_features(pixels, routed_bypass(bypasses, rows, taps.pop(), shared))


__all__ = ["RoutedSite", "SharedSite", "mixed_features", "routed_bypass", "shared_sites", "tap_of"]

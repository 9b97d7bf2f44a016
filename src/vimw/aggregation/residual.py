"""The zoo as a frozen prior plus a new module that adapts: ``zoo(h) + new(h)`` at every site.

ViM keeps the zoo fixed and trains only gates and a head; ``scratch`` ignores the zoo and
trains a new module. Measured on tasks the zoo never saw (``benchmarks/results/dev``), the
zoo's features, amplified by fitted per-site scales, are a better start than the plain
backbone's, but a frozen zoo cannot adapt as a trained module does. ``ZooResidual`` keeps
both: the fitted aggregate (``gatefit.ScaledZooAggregate``, gates and scales frozen) and a
new module of the zoo's kind, zero at the start, that trains with the head. At step 0 the
model computes exactly the fitted aggregate; training adds what the task needs on top.

Inference runs every zoo module plus the new one (the cost of ``ens``); a LoRA zoo folds
into the backbone as before and the new module stays a module.
"""

from __future__ import annotations

import torch
from torch import nn

from vimw.aggregation.gatefit import ScaledZooAggregate
from vimw.errors import VimwError
from vimw.modules import ModuleSet


class ResidualSite(nn.Module):
    """What the backbone calls at one site: the frozen zoo's output plus the new module's."""

    def __init__(self, zoo_site: nn.Module | None, new_site: nn.Module | None, tap: str) -> None:
        super().__init__()
        # Plain attributes: the owner holds the parameters (no state twice in a state dict).
        object.__setattr__(self, "zoo_site", zoo_site)
        object.__setattr__(self, "new_site", new_site)
        self.tap = tap

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        parts = [m(h) for m in (self.zoo_site, self.new_site) if m is not None]
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]


class ZooResidual(nn.Module):
    """A fitted, frozen zoo aggregate plus a trainable new module, summed site by site."""

    def __init__(self, zoo: ScaledZooAggregate, module: ModuleSet) -> None:
        super().__init__()
        new_tap = {type(m).tap for m in module.values()}
        if new_tap != {zoo.tap}:
            raise VimwError(f"the new module attaches at {sorted(new_tap)}, the zoo at {zoo.tap!r}: "
                            "a residual module must attach where the zoo does")
        self.zoo = zoo.requires_grad_(False)
        self.module = module
        zoo_sites, new_sites = zoo.bypass, module.bypass
        order = [s for s in zoo_sites] + [s for s in new_sites if s not in zoo_sites]
        self._sites = {s: ResidualSite(zoo_sites.get(s), new_sites.get(s), zoo.tap) for s in order}

    def train(self, mode: bool = True) -> "ZooResidual":
        super().train(mode)
        self.zoo.eval()  # frozen: no dropout in the zoo's modules
        return self

    @property
    def bypass(self) -> dict[str, nn.Module]:
        """The mapping to pass as ``backbone.forward_features(pixels, bypass=...)``."""
        return dict(self._sites)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


__all__ = ["ResidualSite", "ZooResidual"]

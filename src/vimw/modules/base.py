"""One plug-in module in the ViM sense: a small network at each selected backbone site.

``SiteModule`` is the network at one site; its class attribute ``tap`` tells the
backbone where it reads (``input``: the sublayer's input, output added to the
sublayer's output; ``inner``: the input of the sublayer's final projection, output
added to that projection's output). ``ModuleSet`` holds one ``SiteModule`` per site,
keyed by site name, so ``state_dict`` keys are plain ``<site>.<param>`` names that
stay stable in safetensors files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import nn

from vimw.sites import Site, Tap
from vimw.errors import BackboneMismatchError, FormatError
from vimw.modules._channels import require_unit_stride_for_tokens
from vimw.modules.config import BottleneckConfig, ModuleConfig
from vimw.modules.registry import get_module_kind


class SiteModule(nn.Module):
    """The module at one site: maps what it taps to a tensor added to the site's output."""

    tap: ClassVar[Tap] = "input"
    kind: ClassVar[str] = ""  # set by ``register_module_kind``

    def __init__(self, site: Site, config: ModuleConfig) -> None:
        super().__init__()
        self.site = site

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """What the module adds to the site's output, given what it taps."""
        raise NotImplementedError

    def output_projection(self) -> nn.Linear | None:
        """The module's last linear map: scaling it scales the module's output exactly (None: it has none)."""
        return None

    def extra_repr(self) -> str:
        return f"site={self.site.name}, tap={self.tap}"


class BottleneckModule(SiteModule):
    """A site module between two projections: ``down`` to ``hidden_dim``, dropout, ``up`` back.

    Subclasses add what runs in between. ``reset_parameters`` gives ``down`` Xavier weights
    and zero bias and zeroes ``up``, so a new module adds exactly nothing.
    """

    def __init__(self, site: Site, config: BottleneckConfig) -> None:
        super().__init__(site, config)
        require_unit_stride_for_tokens(site, self.kind)
        self.down = nn.Linear(site.in_channels, config.hidden_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.up = nn.Linear(config.hidden_dim, site.out_channels)

    def output_projection(self) -> nn.Linear:
        return self.up

    def reset_parameters(self) -> None:
        """Xavier ``down`` with zero bias, zero ``up``: the module starts as a no-op."""
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)


class ModuleSet(nn.ModuleDict):
    """The per-site modules of one kind, keyed by site name (names contain no dots)."""

    def __init__(self, config: ModuleConfig, modules: Mapping[str, SiteModule]) -> None:
        _check_site_modules(config, modules)
        super().__init__(modules)
        self.config = config

    @classmethod
    def create(cls, config: ModuleConfig, sites: Sequence[Site]) -> "ModuleSet":
        """A fresh module (a no-op at initialisation) at every site the config selects."""
        entry = get_module_kind(config.kind)
        if not isinstance(config, entry.config_cls):
            raise TypeError(f"kind {config.kind!r} needs a {entry.config_cls.__name__}, got {type(config).__name__}")
        chosen = config.select_sites(sites)
        return cls(config, {site.name: entry.module_cls(site, config) for site in chosen})

    @property
    def kind(self) -> str:
        """The module kind (``convpass``, ``lora``, ...)."""
        return self.config.kind

    @property
    def site_names(self) -> list[str]:
        """The names of the sites the module attaches to, in backbone order."""
        return list(self.keys())

    @property
    def sites(self) -> tuple[Site, ...]:
        """The sites the module attaches to."""
        return tuple(module.site for module in self.values())

    @property
    def bypass(self) -> dict[str, nn.Module]:
        """The mapping to pass as ``backbone.forward_features(pixels, bypass=...)``."""
        return dict(self.items())

    def num_parameters(self) -> int:
        """The number of the module's weights over all its sites."""
        return sum(p.numel() for p in self.parameters())

    def load_weights(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Copy saved tensors in; every key and shape must match exactly."""
        expected = self.state_dict()
        _check_weight_keys(self.kind, expected, tensors)
        for key, want in expected.items():
            got = tensors[key]
            if tuple(got.shape) != tuple(want.shape):
                raise FormatError(
                    f"{self.kind} weights: {key!r} has shape {tuple(got.shape)}, "
                    f"the module expects {tuple(want.shape)}"
                )
            if not got.is_floating_point():
                raise FormatError(f"{self.kind} weights: {key!r} has non-float dtype {got.dtype}")
        self.load_state_dict(dict(tensors), strict=True)


def _check_site_modules(config: ModuleConfig, modules: Mapping[str, SiteModule]) -> None:
    for name, module in modules.items():
        if "." in name or not name:
            raise BackboneMismatchError(f"site name {name!r} must be non-empty and contain no dots")
        if not isinstance(module, SiteModule) or module.kind != config.kind:
            raise TypeError(f"site {name}: expected a {config.kind} SiteModule, got {type(module).__name__}")
        if module.site.name != name:
            raise BackboneMismatchError(f"module for site {module.site.name!r} stored under {name!r}")


def _check_weight_keys(kind: str, expected: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise FormatError(f"{kind} weights do not match the module: missing {missing}, unexpected {unexpected}")

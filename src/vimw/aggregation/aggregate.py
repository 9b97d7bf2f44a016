"""ViM aggregation: per-site softmax gates over N frozen zoo modules (Feng et al. 2023, "Ens-MoE").

For a downstream task each site ``s`` has its own logit vector ``a_s`` over the N zoo
modules (input-independent); the plug-in at ``s`` is ``sum_i softmax(a_s)_i E_{i,s}(h)``.
Modes:

- ``ens``: the paper's Ens-MoE, every module runs, gates learned (default);
- ``topk``: only the ``top_k`` largest gates of each site run (softmax over those);
- ``uniform``: gates fixed equal, only the head trains;
- ``merge``: gate-weighted sum of module *parameters* per site, one module's cost
  (for LoRA the dense updates sum_i g_i s_i B_i A_i are merged, which equals ``ens``)
  (modules must share a kind and config);
- ``single``: one-hot gates on one chosen module (chosen on validation data by the
  workflow), only the head trains.

Only the gates (and the head, outside this class) train; zoo modules stay frozen.

Execution: when the modules present at a site are of one kind and one shape (the
usual zoo), they run as one grouped computation (``vimw.aggregation.batched``), with
zero gates (``topk``, ``single``) skipped by gathering only the active modules'
weights; ``merge`` averages the stacked parameters in one tensor contraction. Pass
``batched=False`` to run the original Python loop over modules (same outputs, kept
as the reference and for benchmarks); mixed zoos always use the loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from vimw.aggregation.batched import StackedModules, stack_modules
from vimw.aggregation.gates import merge_parameters, softmax_gates, topk_gates
from vimw.backbones.base import Backbone
from vimw.errors import VimwError
from vimw.modules import ModuleSet, get_module_kind

MODES = ("ens", "topk", "uniform", "merge", "single")


class GatedSite(nn.Module):
    """The plug-in the backbone calls at one site: a gated mixture of the zoo's modules."""

    def __init__(self, owner: "ZooAggregate", site_index: int, site_name: str, tap: str) -> None:
        super().__init__()
        # A plain attribute, not a submodule: the owner holds the parameters.
        object.__setattr__(self, "owner", owner)
        self.site_index = site_index
        self.site_name = site_name
        self.tap = tap

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.owner.run_site(self.site_index, self.site_name, h)


class ZooAggregate(nn.Module):
    """The plug-in of a downstream model: the zoo's frozen modules mixed by learned per-site gates."""

    def __init__(
        self,
        experts: Sequence[ModuleSet],
        names: Sequence[str],
        backbone: Backbone,
        mode: str = "ens",
        top_k: int = 2,
        single_index: int | None = None,
        batched: bool = True,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise VimwError(f"unknown aggregation mode {mode!r}; choose from {MODES}")
        if not experts:
            raise VimwError("aggregation needs at least one zoo module")
        if len(names) != len(experts):
            raise VimwError("one name per zoo module is needed")
        taps = {type(next(iter(e.values()))).tap for e in experts}
        if len(taps) != 1:
            raise VimwError(f"zoo modules attach at different taps {sorted(taps)}; aggregate modules of one tap")
        if mode == "merge" and len({json_key(e.config.to_dict()) for e in experts}) != 1:
            raise VimwError("mode 'merge' needs modules of one kind and one configuration")
        if mode == "merge" and not get_module_kind(experts[0].kind).mergeable:
            raise VimwError(f"mode 'merge': module kind {experts[0].kind!r} does not declare its parameters mergeable")
        if mode == "single" and single_index is None:
            raise VimwError("mode 'single' needs the index of the chosen module")
        self.mode, self.top_k, self.tap = mode, int(top_k), taps.pop()
        self.names = list(names)
        self.experts = nn.ModuleList(experts)
        for param in self.experts.parameters():
            param.requires_grad_(False)
        self.experts.eval()  # frozen modules: no dropout, from construction on
        self.site_names = [s.name for s in backbone.sites if any(s.name in e for e in experts)]
        available = torch.tensor([[name in e for e in experts] for name in self.site_names], dtype=torch.bool)
        self.register_buffer("available", available, persistent=False)
        initial = torch.zeros(len(self.site_names), len(experts))
        if mode == "single":
            initial.fill_(-1e4)
            initial[:, single_index] = 0.0
        self.gate_logits = nn.Parameter(initial, requires_grad=mode in ("ens", "topk", "merge"))
        self._sites = nn.ModuleDict(
            {name: GatedSite(self, i, name, self.tap) for i, name in enumerate(self.site_names)}
        )
        self.batched = bool(batched)
        # Per site: the indices of the experts present there and their stacked runner
        # (None when they cannot run as one group). Plain attributes: no new state.
        self._groups: dict[str, tuple[list[int], StackedModules | None]] = {}
        for name in self.site_names:
            members = [i for i, e in enumerate(experts) if name in e]
            self._groups[name] = (members, stack_modules([experts[i][name] for i in members]))

    def train(self, mode: bool = True) -> "ZooAggregate":
        super().train(mode)
        self.experts.eval()  # frozen modules: no dropout, whatever the downstream phase
        return self

    @property
    def bypass(self) -> dict[str, nn.Module]:
        """The mapping to pass as ``backbone.forward_features(pixels, bypass=...)``."""
        return dict(self._sites.items())

    def gates(self) -> torch.Tensor:
        """``sites x N`` gate weights as used in the forward pass."""
        if self.mode == "topk":
            return topk_gates(self.gate_logits, self.top_k, self.available)
        return softmax_gates(self.gate_logits, self.available)

    def is_batched(self, site: str) -> bool:
        """Whether ``site`` runs as one grouped computation (else: the loop)."""
        return self.batched and self._groups[site][1] is not None

    def _current_gates(self) -> torch.Tensor:
        """``gates()``, computed once per change of the logits while no gradient reaches them
        (every site of a forward pass reads the same gates)."""
        logits = self.gate_logits
        if torch.is_grad_enabled() and logits.requires_grad:
            return self.gates()
        key = (logits._version, logits.data_ptr(), logits.device, self.mode, self.top_k)
        cached = self.__dict__.get("_gates_cache")
        if cached is None or cached[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                cached = self.__dict__["_gates_cache"] = (key, self.gates())
        return cached[1]

    def run_site(self, index: int, site: str, h: torch.Tensor) -> torch.Tensor:
        """The gated mixture of the zoo's modules at one site, applied to ``h``."""
        weights = self._current_gates()[index]
        if self.is_batched(site):
            return self._run_batched(weights, site, h)
        if self.mode == "merge":
            return self._run_merged(weights, site, h)
        return self._run_loop(weights, site, h)

    def _run_batched(self, weights: torch.Tensor, site: str, h: torch.Tensor) -> torch.Tensor:
        members, stacked = self._groups[site]
        w = weights[members] if len(members) != len(weights) else weights
        if self.mode == "merge":
            return stacked.merged(h, w)
        # As in the loop: exact zeros are skipped when they carry no gradient
        # (top-k and single route none to the dropped logits).
        if self.mode in ("topk", "single") or not w.requires_grad:
            keep = torch.nonzero(w.detach() != 0).flatten()
            if keep.numel() == 0:
                return torch.zeros((), dtype=h.dtype, device=h.device)
            if keep.numel() < len(w):
                return stacked(h, w.index_select(0, keep), keep)
        return stacked(h, w)

    def _run_loop(self, weights: torch.Tensor, site: str, h: torch.Tensor) -> torch.Tensor:
        out = None
        for weight, expert in zip(weights, self.experts):
            # Gates that are exactly zero (top-k, single, absent) cost nothing.
            if site not in expert or (weight == 0 and not weight.requires_grad) or (
                self.mode in ("topk", "single") and weight.item() == 0.0
            ):
                continue
            term = weight * expert[site](h)
            out = term if out is None else out + term
        return out if out is not None else torch.zeros((), dtype=h.dtype, device=h.device)

    def _run_merged(self, weights: torch.Tensor, site: str, h: torch.Tensor) -> torch.Tensor:
        holders = [e[site] for e in self.experts if site in e]
        mask = self.available[self.site_names.index(site)]
        if get_module_kind(holders[0].kind).foldable:  # merge mode: one kind at every site
            # Linear modules (LoRA): merging the dense updates is exact.
            delta = sum(w * m.delta_weight() for w, m in zip(weights[mask], holders))
            return linear_over_channels_weight(h, delta, holders[0].site.layout)
        merged = merge_parameters([dict(m.named_parameters()) for m in holders], weights[mask])
        return functional_call(holders[0], merged, (h,))

    def num_trainable(self) -> int:
        """The number of trained scalars: the gate logits when they learn, else 0."""
        return self.gate_logits.numel() if self.gate_logits.requires_grad else 0

    def parameter_groups(self) -> list[dict]:
        """Optimiser groups this plug-in asks for: the gates, by name, with no weight decay.

        Adam moves a parameter by about its learning rate per step whatever the gradient's
        size, so gate logits need their own (larger) rate to leave uniform in a few-shot run
        (``TrainConfig.gate_lr`` sets the group named ``"gates"``); decay would pull them back.
        """
        if not self.gate_logits.requires_grad:
            return []
        return [{"name": "gates", "params": [self.gate_logits], "weight_decay": 0.0}]


def linear_over_channels_weight(x: torch.Tensor, weight: torch.Tensor, layout: str) -> torch.Tensor:
    """Apply an ``out x in`` matrix over the channel axis (dim 1 of feature maps, last of tokens)."""
    if layout == "nchw":
        return nn.functional.conv2d(x, weight[:, :, None, None])
    return nn.functional.linear(x, weight)


def json_key(payload: dict) -> str:
    """A canonical JSON string of a module config (version stamp left out), to compare configs."""
    import json

    return json.dumps({k: v for k, v in payload.items() if k != "vimw_version"}, sort_keys=True)

"""The N modules of one kind at one site run as one grouped computation (issue 6, item 1).

A Python loop over N modules launches N small kernels per layer; a kind's stacked
runner (a ``StackedModules`` subclass in its folder, declared with
``register_module_kind(..., stacked=...)``) instead stacks the N modules' weights along
a leading *module* axis and runs them together, with the gates folded in as
per-module scaling of the last projection, so the gate-weighted sum costs nothing
extra and gradients reach the gates through it.

``forward(h, gates, index)`` runs only the modules listed in ``index`` (their weights
are gathered), so top-k and one-hot gates cost k modules, not N. ``merged(h, gates)``
runs the gate-weighted *parameter* average as one module (mode ``merge``).

Stacked weights are built once and rebuilt only when a module's parameters change
(tracked through their version counters and storage), so frozen zoo modules are
stacked once per process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from vimw.modules.base import SiteModule

CHUNK_BYTES = 1 << 20  # working-set target per slice of the batch (0: no slicing)
# Fewest images per slice: per-slice overheads (a few operator calls) stay small.
MIN_SLICE = 16


class StackedModules:
    """Weights of N modules of one kind and shape at one site, stacked on dim 0.

    A kind sets ``names`` (the parameter names it stacks) and implements ``prepare``
    and ``apply``; ``accepts`` may refuse groups its computation does not cover.
    """

    names: tuple[str, ...] = ()  # parameter names, in the order of ``_stack``

    def __init__(self, modules: Sequence[SiteModule]) -> None:
        self.modules = list(modules)  # plain list: the owner holds the modules
        self.site = self.modules[0].site
        self.layout = self.site.layout
        self._key: tuple | None = None
        self._stacks: dict[str, torch.Tensor] = {}
        self._selected: dict[tuple[int, ...], dict[str, torch.Tensor]] = {}
        self._prepared: dict[tuple, dict[str, torch.Tensor]] = {}
        # The modules' parameter objects, read once: ``stacks`` runs at every site of every
        # forward pass and named_parameters() costs more than the check itself. In-place
        # updates (optimiser, load_state_dict, .to()) change a version or pointer: seen.
        self._param_lists = [self._params(m) for m in self.modules]

    @classmethod
    def accepts(cls, modules: Sequence[SiteModule]) -> bool:
        """Whether these modules (one class, one site, equal shapes) can run as one group."""
        return True

    def __len__(self) -> int:
        return len(self.modules)

    # -- the stacked weights -------------------------------------------------------
    def _params(self, module: SiteModule) -> list[torch.Tensor]:
        named = dict(module.named_parameters())
        return [named[name] for name in self.names]

    def stacks(self) -> dict[str, torch.Tensor]:
        """Every parameter of the stacked modules as one tensor with a leading module axis."""
        params = self._param_lists
        key = tuple((p._version, p.data_ptr(), p.dtype, p.device) for ps in params for p in ps)
        if key != self._key:
            # Plain tensors even when first built under inference mode: they are kept
            # and later used where autograd records (training the gates).
            with torch.inference_mode(False), torch.no_grad():
                self._stacks = {
                    name: torch.stack([ps[j].detach() for ps in params]) for j, name in enumerate(self.names)
                }
            self._selected, self._prepared = {}, {}
            self._key = key
        return self._stacks

    def select(self, index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The stacked weights of the modules in ``index`` (gathered once per index and weights)."""
        stacks = self.stacks()
        if index is None:
            return stacks
        key = tuple(index.tolist())
        selected = self._selected.get(key)
        if selected is None:
            if len(self._selected) >= 64:  # top-k gates that keep moving (training): bounded
                self._selected.clear()
            with torch.inference_mode(False), torch.no_grad():
                selected = {name: t.index_select(0, index) for name, t in stacks.items()}
            self._selected[key] = selected
        return selected

    # -- running ---------------------------------------------------------------------
    def __call__(self, h: torch.Tensor, gates: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_i gates[i] * E_i(h)`` over the modules in ``index`` (all when ``None``)."""
        return self.run_chunked(self.prepared(index, gates), h)

    def prepared(self, index: torch.Tensor | None, gates: torch.Tensor) -> dict[str, torch.Tensor]:
        """``prepare`` of the selected modules; kept while neither the weights nor the gates change.

        Only when no gradient reaches the gates (inference, frozen gates): otherwise the
        gates' graph must be rebuilt on every call.
        """
        w = self.select(index)  # first: refreshes the stacks (and clears the caches) if weights changed
        if torch.is_grad_enabled() and gates.requires_grad:
            return self.prepare(w, gates)
        key = (None if index is None else tuple(index.tolist()), tuple(gates.tolist()), gates.dtype, gates.device)
        p = self._prepared.get(key)
        if p is None:
            if len(self._prepared) >= 64:
                self._prepared.clear()
            with torch.inference_mode(False), torch.no_grad():
                p = self._prepared[key] = self.prepare(w, gates.detach().clone())
        return p

    def run(self, w: dict[str, torch.Tensor], h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """The gate-weighted sum of the modules whose stacked weights are ``w``, on ``h``."""
        return self.apply(self.prepare(w, gates), h)

    def run_chunked(self, p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """``apply`` over slices of the batch whose ``N*d``-channel intermediates fit in cache.

        Only without autograd (inference): per-image results don't depend on the
        batch, and small working sets keep the elementwise passes in cache.
        """
        recording = torch.is_grad_enabled() and (h.requires_grad or p["up"].requires_grad)
        if CHUNK_BYTES <= 0 or recording or h.dim() < 2:
            return self.apply(p, h)
        per_image = self.hidden_bytes(p, h)
        step = max(MIN_SLICE, CHUNK_BYTES // max(1, per_image))
        if step >= h.shape[0]:
            return self.apply(p, h)
        return torch.cat([self.apply(p, part) for part in h.split(step)])

    def hidden_bytes(self, p: dict[str, torch.Tensor], h: torch.Tensor) -> int:
        """Bytes of the widest intermediate per image (``N*k`` channels at the input size)."""
        return p["down"].shape[0] * (h[0].numel() // h.shape[1 if self.layout == "nchw" else -1]) * h.element_size()

    def merged(self, h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """One module whose parameters are ``sum_i gates[i] * theta_i`` (mode ``merge``)."""
        stacks = self.stacks()
        merged = {
            name: torch.tensordot(gates.to(t.dtype), t, dims=([0], [0])).unsqueeze(0) for name, t in stacks.items()
        }
        return self.run(merged, h, torch.ones(1, dtype=h.dtype, device=h.device))

    def prepare(self, w: dict[str, torch.Tensor], gates: torch.Tensor) -> dict[str, torch.Tensor]:
        """The matrices ``apply`` uses, gates folded in: ``"down"`` (``N*k`` rows) and ``"up"`` at least."""
        raise NotImplementedError

    def apply(self, p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """The gate-weighted sum of the modules, from ``prepare``'s matrices, on ``h``."""
        return self.project(p, self.hidden(p, h))

    # A kind that splits ``apply`` in two lets rows with other gates share the first part
    # (``vimw serve``: rows of several models, one hidden pass, each row its own projection).
    def hidden(self, p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """What the last, gate-scaled projection reads: it does not depend on the gates."""
        raise NotImplementedError

    def project(self, p: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """The last projection (``p["up"]``, gates folded in) of ``hidden``'s output."""
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------------------
    def _channels(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """A linear map over the channel axis (dim 1 for feature maps, last for tokens).

        A channels-last feature map is ``N x H x W x C`` in memory: one matrix product on
        that view, whatever the batch size (a single-threaded 1x1 convolution of fewer
        than 16 images falls back to a slower reference kernel).
        """
        if self.layout != "nchw":
            return F.linear(x, weight, bias)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)
        return F.conv2d(x, weight[:, :, None, None], bias)


def cat_scaled(weight: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """``N x out x k`` -> ``out x N*k`` with module i's block scaled by ``gates[i]``."""
    n, out, k = weight.shape
    return (weight * gates.to(weight.dtype)[:, None, None]).permute(1, 0, 2).reshape(out, n * k)


def gated_bias(bias: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """``sum_i gates[i] * bias_i`` of stacked ``N x out`` biases."""
    return gates.to(bias.dtype) @ bias

"""The N zoo modules of one site run as one grouped computation (issue 6, item 1).

A Python loop over N modules launches N small kernels per layer; here the N modules'
weights are stacked along a leading *module* axis and run together:

- convpass: the N down-projections are one 1x1 convolution (``N*d`` output channels),
  the N 3x3 convolutions one grouped convolution (``groups=N``), and the N
  up-projections one 1x1 convolution over the ``N*d`` channels whose weight is
  ``[g_1 W_up,1 | ... | g_N W_up,N]``: the gates are folded in as per-module scaling, so
  the gate-weighted sum costs nothing extra and gradients reach the gates through it.
- lora: ``sum_i g_i s_i B_i A_i z`` is ``[g s B]_cat (A_cat z)``: two matrix products.
- adapter: down-projections concatenated, up-projections concatenated and gate-scaled.

``forward(h, gates, index)`` runs only the modules listed in ``index`` (their weights
are gathered), so top-k and one-hot gates cost k modules, not N. ``merged(h, gates)``
runs the gate-weighted *parameter* average as one module (mode ``merge``).

Stacked weights are built once and rebuilt only when a module's parameters change
(tracked through their version counters and storage), so frozen zoo modules are
stacked once per process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from vimw.modules import AdapterModule, ConvpassModule, LoRAModule
from vimw.modules.base import SiteModule


CHUNK_BYTES = 1 << 20  # working-set target per slice of the batch (0: no slicing)
# Fewest images per slice: per-slice overheads (a few operator calls) stay small.
MIN_SLICE = 16


class StackedModules:
    """Weights of N modules of one kind and shape at one site, stacked on dim 0."""

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
        """The matrices ``apply`` uses, gates folded in; ``"down"`` is the first (``N*k`` rows)."""
        raise NotImplementedError

    def apply(self, p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """The gate-weighted sum of the modules, from ``prepare``'s matrices, on ``h``."""
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


# QuickGELU(x) = x * sigmoid(1.702 x) = silu(1.702 x) / 1.702: the factors are folded into
# the weights around each activation (``StackedConvpass.prepare``), so the batched
# path runs one silu per activation.
_QUICK_GELU_SLOPE = 1.702


def _silu(z: torch.Tensor) -> torch.Tensor:
    """silu, in place when no gradient is needed: one pass over the ``N*d``-channel tensor
    and no fresh allocation (page faults and cache misses made the batched path slower
    than the loop on CPU)."""
    return F.silu(z, inplace=not (torch.is_grad_enabled() and z.requires_grad))


def _cat_scaled(weight: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """``N x out x k`` -> ``out x N*k`` with module i's block scaled by ``gates[i]``."""
    n, out, k = weight.shape
    return (weight * gates.to(weight.dtype)[:, None, None]).permute(1, 0, 2).reshape(out, n * k)


class StackedConvpass(StackedModules):
    """Convpass modules of one site run as one grouped convolution."""

    names = ("down.weight", "down.bias", "conv.weight", "conv.bias", "up.weight", "up.bias")

    def prepare(self, w: dict[str, torch.Tensor], gates: torch.Tensor) -> dict[str, torch.Tensor]:
        # u1 = 1.702 (W_d h + b_d); u2 = W_c silu(u1) + 1.702 b_c = 1.702 (W_c QuickGELU(W_d h + b_d) + b_c);
        # out = (W_up / 1.702) silu(u2) + b_up: the modules' QuickGELUs exactly, up to rounding.
        n, d, cin = w["down.weight"].shape
        slope = _QUICK_GELU_SLOPE
        return {
            "down": w["down.weight"].reshape(n * d, cin) * slope,
            "down_bias": w["down.bias"].reshape(n * d) * slope,
            "conv": w["conv.weight"].reshape(n * d, *w["conv.weight"].shape[2:]),
            "conv_bias": w["conv.bias"].reshape(n * d) * slope,
            "up": _cat_scaled(w["up.weight"], gates / slope),
            "up_bias": gates.to(w["up.bias"].dtype) @ w["up.bias"],
        }

    def apply(self, p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        z = _silu(self._channels(h, p["down"], p["down_bias"]))
        groups = p["conv"].shape[0] // p["conv"].shape[1]  # one group per module
        if self.layout == "nchw":
            z = F.conv2d(z, p["conv"], p["conv_bias"], stride=self.site.stride, padding=1, groups=groups)
        else:
            z = self._conv_tokens(z, p["conv"], p["conv_bias"], groups)
        return self._channels(_silu(z), p["up"], p["up_bias"])

    def _conv_tokens(self, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> torch.Tensor:
        def grid(tokens: torch.Tensor) -> torch.Tensor:
            batch, length, channels = tokens.shape
            side = math.isqrt(length)
            if side * side != length:
                from vimw.errors import BackboneMismatchError

                raise BackboneMismatchError(
                    f"convpass at site {self.site.name}: {length} patch tokens do not form a square grid"
                )
            maps = tokens.transpose(1, 2).reshape(batch, channels, side, side)
            out = F.conv2d(maps, weight, bias, padding=1, groups=groups)
            return out.flatten(2).transpose(1, 2)

        if self.layout == "nlc":
            return grid(z)
        return torch.cat([grid(z[:, :1]), grid(z[:, 1:])], dim=1)


class StackedLoRA(StackedModules):
    """LoRA modules of one site run as one low-rank product (or one merged dense update)."""

    names = ("lora_A.weight", "lora_B.weight")

    def __init__(self, modules: Sequence[SiteModule]) -> None:
        super().__init__(modules)
        self.scales = torch.tensor([float(m.scale) for m in self.modules])

    def __call__(self, h: torch.Tensor, gates: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        scales = self.scales.to(device=gates.device, dtype=gates.dtype)
        scales = scales if index is None else scales.index_select(0, index.to(scales.device))
        return super().__call__(h, gates * scales, index)

    def merged(self, h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        # LoRA is linear: the parameter-space merge is the dense sum_i g_i s_i B_i A_i,
        # which equals the output-space ensemble exactly.
        stacks = self.stacks()
        weights = gates.to(h.dtype) * self.scales.to(device=h.device, dtype=h.dtype)
        delta = torch.einsum("n,nor,nri->oi", weights, stacks["lora_B.weight"], stacks["lora_A.weight"])
        return self._channels(h, delta, None)

    def prepare(self, w: dict[str, torch.Tensor], gates: torch.Tensor) -> dict[str, torch.Tensor]:
        n, r, inner = w["lora_A.weight"].shape
        return {"down": w["lora_A.weight"].reshape(n * r, inner), "up": _cat_scaled(w["lora_B.weight"], gates)}

    def apply(self, p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        return self._channels(self._channels(h, p["down"], None), p["up"], None)


class StackedAdapter(StackedModules):
    """Bottleneck adapters of one site run as one batched pair of projections."""

    names = ("down.weight", "down.bias", "up.weight", "up.bias")

    def prepare(self, w: dict[str, torch.Tensor], gates: torch.Tensor) -> dict[str, torch.Tensor]:
        n, k, cin = w["down.weight"].shape
        return {"down": w["down.weight"].reshape(n * k, cin), "down_bias": w["down.bias"].reshape(n * k),
                "up": _cat_scaled(w["up.weight"], gates), "up_bias": gates.to(w["up.bias"].dtype) @ w["up.bias"]}

    def apply(self, p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        stride = self.site.stride
        if stride > 1:
            h = F.avg_pool2d(h, stride, stride=stride, ceil_mode=True)
        z = F.gelu(self._channels(h, p["down"], p["down_bias"]))
        return self._channels(z, p["up"], p["up_bias"])


_STACKERS: dict[type, type[StackedModules]] = {
    ConvpassModule: StackedConvpass,
    LoRAModule: StackedLoRA,
    AdapterModule: StackedAdapter,
}


def stack_modules(modules: Sequence[nn.Module]) -> StackedModules | None:
    """A stacked runner for ``modules``, or ``None`` when they cannot run as one group.

    They can when all are of one known kind (exact class, not a subclass that may
    change ``forward``), sit at the same site and have parameters of identical shapes.
    """
    if not modules:
        return None
    cls = type(modules[0])
    stacker = _STACKERS.get(cls)
    if stacker is None or any(type(m) is not cls for m in modules):
        return None
    site = modules[0].site
    if any(m.site != site for m in modules):
        return None
    shapes = [{n: tuple(p.shape) for n, p in m.named_parameters()} for m in modules]
    if any(s != shapes[0] for s in shapes) or set(shapes[0]) != set(stacker.names):
        return None
    if cls is LoRAModule and len({float(m.scale) for m in modules}) != 1:
        return None  # merge keeps one scale; ens would cope, but keep one rule
    if cls is AdapterModule and any(not isinstance(m.act, nn.GELU) or m.act.approximate != "none" for m in modules):
        return None
    return stacker(modules)


__all__ = ["StackedAdapter", "StackedConvpass", "StackedLoRA", "StackedModules", "stack_modules"]

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
from vimw.modules.convpass import quick_gelu


CHUNK_BYTES = 1 << 20  # working-set target per slice of the batch (0: no slicing)


class StackedModules:
    """Weights of N modules of one kind and shape at one site, stacked on dim 0."""

    names: tuple[str, ...] = ()  # parameter names, in the order of ``_stack``

    def __init__(self, modules: Sequence[SiteModule]) -> None:
        self.modules = list(modules)  # plain list: the owner holds the modules
        self.site = self.modules[0].site
        self.layout = self.site.layout
        self._key: tuple | None = None
        self._stacks: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.modules)

    # -- the stacked weights -------------------------------------------------------
    def _params(self, module: SiteModule) -> list[torch.Tensor]:
        named = dict(module.named_parameters())
        return [named[name] for name in self.names]

    def stacks(self) -> dict[str, torch.Tensor]:
        """Every parameter of the stacked modules as one tensor with a leading module axis."""
        params = [p for m in self.modules for p in self._params(m)]
        key = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in params)
        if key != self._key:
            with torch.no_grad():
                self._stacks = {
                    name: torch.stack([self._params(m)[j].detach() for m in self.modules])
                    for j, name in enumerate(self.names)
                }
            self._key = key
        return self._stacks

    def select(self, index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        stacks = self.stacks()
        if index is None:
            return stacks
        return {name: t.index_select(0, index) for name, t in stacks.items()}

    # -- running ---------------------------------------------------------------------
    def __call__(self, h: torch.Tensor, gates: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_i gates[i] * E_i(h)`` over the modules in ``index`` (all when ``None``)."""
        return self.run_chunked(self.select(index), h, gates)

    def run_chunked(self, w: dict[str, torch.Tensor], h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """``run`` over slices of the batch whose ``N*d``-channel intermediates fit in cache.

        Only without autograd (inference): per-image results don't depend on the
        batch, and small working sets keep the elementwise passes in cache.
        """
        per_image = self.hidden_bytes(w, h)
        if CHUNK_BYTES <= 0 or (torch.is_grad_enabled() and (h.requires_grad or gates.requires_grad)) or h.dim() < 2:
            return self.run(w, h, gates)
        step = max(1, CHUNK_BYTES // max(1, per_image))
        if step >= h.shape[0]:
            return self.run(w, h, gates)
        return torch.cat([self.run(w, part, gates) for part in h.split(step)])

    def hidden_bytes(self, w: dict[str, torch.Tensor], h: torch.Tensor) -> int:
        """Bytes of the widest intermediate per image (``N*k`` channels at the input size)."""
        first = w[self.names[0]]
        return first.shape[0] * first.shape[1] * (h[0].numel() // h.shape[1 if self.layout == "nchw" else -1]) * h.element_size()

    def merged(self, h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """One module whose parameters are ``sum_i gates[i] * theta_i`` (mode ``merge``)."""
        stacks = self.stacks()
        merged = {
            name: torch.tensordot(gates.to(t.dtype), t, dims=([0], [0])).unsqueeze(0) for name, t in stacks.items()
        }
        return self.run(merged, h, torch.ones(1, dtype=h.dtype, device=h.device))

    def run(self, w: dict[str, torch.Tensor], h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------------------
    def _channels(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """A linear map over the channel axis (dim 1 for feature maps, last for tokens)."""
        if self.layout == "nchw":
            return F.conv2d(x, weight[:, :, None, None], bias)
        return F.linear(x, weight, bias)


_QUICK_GELU_SLOPE = 1.702


def _act(z: torch.Tensor) -> torch.Tensor:
    """QuickGELU; in place when no gradient is needed.

    ``x * sigmoid(1.702 x) == silu(1.702 x) / 1.702``: three in-place passes over the
    (large, ``N*d``-channel) tensor instead of three fresh allocations, which on CPU
    is what made the batched path slower than the loop (page faults, cache misses).
    """
    if torch.is_grad_enabled() and z.requires_grad:
        return quick_gelu(z)
    z = z.mul_(_QUICK_GELU_SLOPE)
    return F.silu(z, inplace=True).div_(_QUICK_GELU_SLOPE)


def _cat_scaled(weight: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """``N x out x k`` -> ``out x N*k`` with module i's block scaled by ``gates[i]``."""
    n, out, k = weight.shape
    return (weight * gates.to(weight.dtype)[:, None, None]).permute(1, 0, 2).reshape(out, n * k)


class StackedConvpass(StackedModules):
    """Convpass modules of one site run as one grouped convolution."""

    names = ("down.weight", "down.bias", "conv.weight", "conv.bias", "up.weight", "up.bias")

    def run(self, w: dict[str, torch.Tensor], h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        n, d, cin = w["down.weight"].shape
        down = w["down.weight"].reshape(n * d, cin)
        z = _act(self._channels(h, down, w["down.bias"].reshape(n * d)))
        conv_w = w["conv.weight"].reshape(n * d, *w["conv.weight"].shape[2:])
        conv_b = w["conv.bias"].reshape(n * d)
        if self.layout == "nchw":
            z = F.conv2d(z, conv_w, conv_b, stride=self.site.stride, padding=1, groups=n)
        else:
            z = self._conv_tokens(z, conv_w, conv_b, n)
        z = _act(z)
        up = _cat_scaled(w["up.weight"], gates)
        bias = gates.to(h.dtype) @ w["up.bias"]
        return self._channels(z, up, bias)

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
        return self.run_chunked(self.select(index), h, gates * scales)

    def merged(self, h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        # LoRA is linear: the parameter-space merge is the dense sum_i g_i s_i B_i A_i,
        # which equals the output-space ensemble exactly.
        stacks = self.stacks()
        weights = gates.to(h.dtype) * self.scales.to(device=h.device, dtype=h.dtype)
        delta = torch.einsum("n,nor,nri->oi", weights, stacks["lora_B.weight"], stacks["lora_A.weight"])
        return self._channels(h, delta, None)

    def run(self, w: dict[str, torch.Tensor], h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        n, r, inner = w["lora_A.weight"].shape
        low = self._channels(h, w["lora_A.weight"].reshape(n * r, inner), None)
        return self._channels(low, _cat_scaled(w["lora_B.weight"], gates), None)


class StackedAdapter(StackedModules):
    """Bottleneck adapters of one site run as one batched pair of projections."""

    names = ("down.weight", "down.bias", "up.weight", "up.bias")

    def run(self, w: dict[str, torch.Tensor], h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        stride = self.site.stride
        if stride > 1:
            h = F.avg_pool2d(h, stride, stride=stride, ceil_mode=True)
        n, k, cin = w["down.weight"].shape
        z = F.gelu(self._channels(h, w["down.weight"].reshape(n * k, cin), w["down.bias"].reshape(n * k)))
        return self._channels(z, _cat_scaled(w["up.weight"], gates), gates.to(h.dtype) @ w["up.bias"])


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

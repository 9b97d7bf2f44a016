"""LoRA modules of one site run as two matrix products: ``sum_i g_i s_i B_i A_i z = [g s B]_cat (A_cat z)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vimw.modules.base import SiteModule
from vimw.modules.stacked import StackedModules, cat_scaled


class StackedLoRA(StackedModules):
    """LoRA modules of one site run as one low-rank product (or one merged dense update)."""

    names = ("lora_A.weight", "lora_B.weight")

    def __init__(self, modules: Sequence[SiteModule]) -> None:
        super().__init__(modules)
        self.scales = torch.tensor([float(m.scale) for m in self.modules])

    @classmethod
    def accepts(cls, modules: Sequence[SiteModule]) -> bool:
        return len({float(m.scale) for m in modules}) == 1  # merge keeps one scale; ens would cope, but keep one rule

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
        return {"down": w["lora_A.weight"].reshape(n * r, inner), "up": cat_scaled(w["lora_B.weight"], gates)}

    def hidden(self, p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        return self._channels(h, p["down"], None)

    def project(self, p: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        return self._channels(z, p["up"], None)

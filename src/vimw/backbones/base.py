"""The backbone contract: a frozen model that exposes *sites* where plug-in modules attach.

A backbone runs as ``stem -> block 0 .. block B-1 -> pool [-> classify]``. Each block
holds one or more sites. At a site the backbone computes ``y = sublayer(h) + m(h)`` for
the plug-in ``m`` passed in the ``bypass`` mapping (ViM, Feng et al. 2023), or, for modules that
declare ``tap = "inner"``, adds ``m(z)`` to the output of the sublayer's final linear
projection, where ``z`` is that projection's input (a LoRA-style update that can be
folded into the weights).

Backbones know nothing about module classes: the ``bypass`` mapping (site name ->
callable ``nn.Module``) is the only meeting point, passed explicitly on every call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from vimw.errors import DataError, VimwError
from vimw.sites import Bypass, Site


@dataclass(frozen=True)
class BackboneRecord:
    """What a saved module or model records about its backbone: enough to check it and rebuild it.

    ``arch`` is the display name, ``source`` what ``create_backbone(source)`` rebuilds it
    from (the registry name, or ``hf:`` + a hub id or an absolute directory),
    ``fingerprint`` the sha256 of its weights, ``image_size`` the input resolution.
    """

    arch: str
    source: str
    fingerprint: str
    image_size: int

    def to_dict(self) -> dict:
        """The record as the JSON object saved in manifests."""
        return asdict(self)


@dataclass(frozen=True)
class Preprocess:
    """Turns images into the backbone's input: resize, grey->RGB, scale, normalise.

    Accepts a uint8 tensor (0..255) or a float tensor (0..1) of shape ``N x C x H x W``
    with C in {1, 3, 4} (alpha is dropped), or ``N x H x W`` for grey images.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def with_size(self, size: int) -> "Preprocess":
        """The same preprocessing at another input resolution."""
        return replace(self, size=int(size))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise DataError(f"expected a tensor of images, got {type(images).__name__}")
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4 or images.shape[1] not in (1, 3, 4):
            raise DataError(
                f"expected images shaped N x C x H x W with C in (1, 3, 4), got {tuple(images.shape)}"
            )
        if images.shape[0] == 0:
            raise DataError("expected at least one image, got an empty batch")
        if images.shape[2] == 0 or images.shape[3] == 0:
            raise DataError(f"images must be at least 1 x 1 pixels, got {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise DataError(
                f"images must be uint8 (0..255) or floating point (0..1), got dtype {images.dtype}"
            )
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if not torch.isfinite(x).all():
            raise DataError("images contain NaN or infinite pixel values")
        if x.shape[1] == 4:
            x = x[:, :3]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = nn.functional.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
            )
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def hash_state_dict(arch: str, state: Mapping[str, torch.Tensor]) -> str:
    """Stable sha256 of an architecture name and its weights (key, dtype, shape, bytes)."""
    digest = hashlib.sha256(arch.encode())
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class Backbone(nn.Module):
    """Base class of every frozen foundation model in vimw.

    Subclasses set ``arch`` (registry name), ``sites``, ``feature_dim``, ``preprocess``
    and ``class_names`` (``None`` without a classifier head) and implement ``stem``,
    ``run_block``, ``pool`` and optionally ``classify``. Everything else (full forward,
    prefix reuse, intermediates, fingerprint, freezing) is shared.
    """

    arch: str = "backbone"
    source: str | None = None  # what rebuilds it (``create_backbone(source)``); None: ``arch``
    sites: tuple[Site, ...] = ()
    feature_dim: int = 0
    num_blocks: int = 0
    class_names: tuple[str, ...] | None = None
    preprocess: Preprocess

    def __init__(self) -> None:
        super().__init__()
        self._frozen = False
        self._fingerprint: str | None = None

    # -- what subclasses implement -------------------------------------------------
    def stem(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels to the hidden state before block 0."""
        raise NotImplementedError

    def run_block(self, index: int, hidden: torch.Tensor, bypass: Bypass | None) -> torch.Tensor:
        """Run block ``index`` on ``hidden``, adding the modules ``bypass`` holds for its sites."""
        raise NotImplementedError

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """The last hidden state to pooled features ``N x feature_dim``."""
        raise NotImplementedError

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features to the pretrained classifier's logits (backbones that have one)."""
        raise VimwError(f"backbone {self.arch} has no classifier head")

    # -- shared behaviour ---------------------------------------------------------
    @property
    def has_classifier(self) -> bool:
        """Whether the backbone keeps its pretrained classifier (``class_names`` is set)."""
        return self.class_names is not None

    def site(self, name: str) -> Site:
        """The site named ``name``; a ``VimwError`` for an unknown one."""
        for site in self.sites:
            if site.name == name:
                return site
        raise VimwError(f"backbone {self.arch} has no site named {name!r}")

    def site_names(self) -> list[str]:
        """The sites' names, in backbone order."""
        return [s.name for s in self.sites]

    def check_bypass(self, bypass: Bypass | None) -> None:
        """Refuse a bypass mapping that names sites this backbone does not have."""
        if not bypass:
            return
        unknown = sorted(set(bypass) - set(self.site_names()))
        if unknown:
            raise VimwError(f"backbone {self.arch} has no sites named {unknown}")

    def forward_blocks(
        self, hidden: torch.Tensor, bypass: Bypass | None = None, start: int = 0, stop: int | None = None
    ) -> torch.Tensor:
        """Run blocks ``start`` .. ``stop - 1`` on a hidden state (for prefix reuse)."""
        stop = self.num_blocks if stop is None else stop
        for index in range(start, stop):
            hidden = self.run_block(index, hidden, bypass)
        return hidden

    def forward_intermediates(
        self, pixels: torch.Tensor, bypass: Bypass | None = None, blocks: Sequence[int] = ()
    ) -> list[torch.Tensor]:
        """Hidden states after each of the listed blocks (for dense heads)."""
        wanted = sorted(set(int(b) for b in blocks))
        if not wanted:
            return []
        if wanted[0] < 0 or wanted[-1] >= self.num_blocks:
            raise VimwError(f"block indices must be in [0, {self.num_blocks}), got {wanted}")
        hidden, outputs = self.stem(pixels), {}
        for index in range(wanted[-1] + 1):
            hidden = self.run_block(index, hidden, bypass)
            if index in wanted:
                outputs[index] = hidden
        return [outputs[int(b)] for b in blocks]

    def forward_features(self, pixels: torch.Tensor, bypass: Bypass | None = None) -> torch.Tensor:
        """Pooled features ``N x feature_dim`` of preprocessed pixels."""
        return self.pool(self.forward_blocks(self.stem(pixels), bypass))

    def forward(self, pixels: torch.Tensor, bypass: Bypass | None = None) -> torch.Tensor:
        return self.forward_features(pixels, bypass)

    def first_block_with(self, site_names: Sequence[str]) -> int:
        """Index of the earliest block holding one of ``site_names`` (prefix boundary)."""
        blocks = [self.site(n).block for n in site_names]
        return min(blocks) if blocks else self.num_blocks

    # -- identity -----------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 of the architecture name and the pretrained weights, computed once."""
        if self._fingerprint is None:
            self._fingerprint = hash_state_dict(self.arch, self.state_dict())
        return self._fingerprint

    def record(self) -> BackboneRecord:
        """Arch, source, fingerprint and image size, as saved with every module and model."""
        return BackboneRecord(arch=self.arch, source=self.source or self.arch,
                              fingerprint=self.fingerprint(), image_size=self.preprocess.size)

    def num_parameters(self) -> int:
        """The number of weights (frozen ones included)."""
        return sum(p.numel() for p in self.parameters())

    # -- freezing -------------------------------------------------------------------
    def freeze(self) -> "Backbone":
        """Stop gradients and keep normalisation statistics and dropout in inference mode."""
        for param in self.parameters():
            param.requires_grad_(False)
        self._frozen = True
        return self.train(False)

    def unfreeze(self) -> "Backbone":
        """Make the weights trainable (full fine-tuning); normalisation stays in eval mode."""
        for param in self.parameters():
            param.requires_grad_(True)
        self._frozen = False
        return self

    @property
    def frozen(self) -> bool:
        """Whether ``freeze()`` is in force (no gradients, normalisation in eval mode)."""
        return self._frozen

    def train(self, mode: bool = True) -> "Backbone":
        # Batch statistics from few-shot batches would corrupt pretrained BN layers, so
        # a backbone's normalisation layers always stay in eval mode.
        super().train(False if self._frozen else mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(False)
        return self

    def describe(self) -> dict:
        """A summary for listings: arch, image size, feature size, blocks, sites, parameters."""
        return {
            "arch": self.arch,
            "image_size": self.preprocess.size,
            "feature_dim": self.feature_dim,
            "num_blocks": self.num_blocks,
            "num_sites": len(self.sites),
            "num_parameters": self.num_parameters(),
            "has_classifier": self.has_classifier,
        }

"""Backbones registered by name: ``create_backbone("efficientnet_lite0", image_size=64)``.

Names starting with ``hf:`` are HF transformers vision transformers (CLIP, ViT, DINOv2, SigLIP:
``hf:openai/clip-vit-base-patch16`` or ``hf:/path/to/local/dir``), built by the ``hf_vit`` factory,
which reads the family from the checkpoint's config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vimw.backbones.base import Backbone
from vimw.errors import RegistryError

HF_PREFIX = "hf:"


@dataclass(frozen=True)
class BackboneEntry:
    """One registered backbone: its name, factory, one-line description and native input size."""

    name: str
    factory: Callable[..., Backbone]
    description: str
    default_size: int


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(name: str, description: str, default_size: int):
    """Decorator registering a backbone factory ``factory(image_size=None, **kwargs)`` under ``name``."""
    def decorator(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise RegistryError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = BackboneEntry(name, factory, description, default_size)
        return factory

    return decorator


def list_backbones() -> list[BackboneEntry]:
    """Every registered backbone, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def create_backbone(name: str, *, image_size: int | None = None, freeze: bool = True, **kwargs) -> Backbone:
    """Build a backbone by registry name (pretrained weights, frozen by default)."""
    if name.startswith(HF_PREFIX):
        from vimw.backbones.hf_vit import create_hf_backbone

        model = create_hf_backbone(name[len(HF_PREFIX):], image_size=image_size, **kwargs)
    else:
        if name not in _REGISTRY:
            known = ", ".join(sorted(_REGISTRY)) or "none"
            raise RegistryError(
                f"unknown backbone {name!r}; registered: {known} (or 'hf:<name or dir>' for an HF CLIP, ViT, DINOv2 or SigLIP model)"
            )
        model = _REGISTRY[name].factory(image_size=image_size, **kwargs)
    return model.freeze() if freeze else model

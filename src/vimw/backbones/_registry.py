"""Backbones registered by name: ``create_backbone("efficientnet_lite0", image_size=64)``, or
``create_backbone("efficientnet_lite0@64")`` (the model-name grammar of ``backbones.names``).

Names starting with ``hf:`` are HF transformers vision transformers (CLIP, ViT, DINOv2, SigLIP:
``hf:openai/clip-vit-base-patch16`` or ``hf:/path/to/local/dir``), built by the ``hf_vit`` factory,
which reads the family from the checkpoint's config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vimw.backbones.base import Backbone
from vimw.backbones.names import HF_PREFIX, parse_model_name
from vimw.errors import RegistryError


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
    """Build a backbone by name, ``NAME[@SIZE]`` (pretrained weights, frozen by default).

    ``image_size`` and a size in the name must agree when both are given.
    """
    parsed = parse_model_name(name)
    if parsed.invert:
        raise RegistryError(f"{name!r}: '+invert' is an option of zero-shot heads (vimw transfer), not of a backbone")
    if image_size is not None and parsed.image_size is not None and int(image_size) != parsed.image_size:
        raise RegistryError(f"{name!r} names size {parsed.image_size} but image_size={image_size} was given")
    size = parsed.image_size if image_size is None else image_size
    if parsed.is_hf:
        from vimw.backbones.hf_vit import create_hf_backbone

        model = create_hf_backbone(parsed.arch[len(HF_PREFIX):], image_size=size, **kwargs)
    else:
        if parsed.arch not in _REGISTRY:
            known = ", ".join(sorted(_REGISTRY)) or "none"
            raise RegistryError(
                f"unknown backbone {parsed.arch!r}; registered: {known} (or 'hf:<name or dir>' for an HF CLIP, ViT, "
                "DINOv2 or SigLIP model)"
            )
        model = _REGISTRY[parsed.arch].factory(image_size=size, **kwargs)
    return model.freeze() if freeze else model

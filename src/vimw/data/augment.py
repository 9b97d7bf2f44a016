"""Label-preserving augmentation for few-shot training: random resized crop, shifts, flips.

With 20-40 training images a head reaches zero training loss within a few steps and
nothing is left to learn from; new views of the same images keep a signal alive.
Every view is one random affine map of the image (scale, aspect ratio, position and,
where allowed, a horizontal mirror), applied by bilinear resampling to the whole batch
at once. Masks of dense tasks go through the same map with nearest-neighbour sampling,
so a pixel keeps its label.

A horizontal flip changes the label of some tasks (digits: a mirrored 2 is no digit;
rotation prediction: a mirrored quarter turn is another turn), so flips happen only when
the task declares them safe (``TaskSpec.hflip_safe``); a task that says nothing gets none.

Views are a pure function of the generator's seed, so a run is reproducible and a
resumed run sees the same views.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from vimw.errors import FormatError


@dataclass(frozen=True)
class AugmentConfig:
    """What a random view may change.

    ``scale``: range of the crop's area as a fraction of the image; ``ratio``: range of its
    aspect ratio (width / height); ``translate``: largest extra shift of the crop's centre,
    as a fraction of the image side; ``hflip``: mirror half of the views, *if the task
    allows it* (a task that declares flips unsafe is never flipped, whatever this says).
    """

    scale: tuple[float, float] = (0.7, 1.0)
    ratio: tuple[float, float] = (0.8, 1.25)
    translate: float = 0.1
    hflip: bool = True

    def __post_init__(self) -> None:
        scale, ratio = tuple(float(v) for v in self.scale), tuple(float(v) for v in self.ratio)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise FormatError(f"augment scale must be 0 < low <= high <= 1, got {self.scale}")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise FormatError(f"augment ratio must be 0 < low <= high, got {self.ratio}")
        if not 0 <= float(self.translate) < 0.5:
            raise FormatError(f"augment translate must be in [0, 0.5), got {self.translate}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "ratio", ratio)
        object.__setattr__(self, "translate", float(self.translate))

    def to_dict(self) -> dict:
        payload = asdict(self)
        return {**payload, "scale": list(self.scale), "ratio": list(self.ratio)}

    @classmethod
    def from_dict(cls, payload: dict | bool | None) -> "AugmentConfig | None":
        """``None``/``False``: no augmentation; ``True``: the defaults; a dict: those fields."""
        if payload is None or payload is False:
            return None
        if payload is True:
            return cls()
        if not isinstance(payload, dict):
            raise FormatError(f"augment settings must be true, false or an object, got {payload!r}")
        unknown = set(payload) - {"scale", "ratio", "translate", "hflip"}
        if unknown:
            raise FormatError(f"unknown augment setting(s) {sorted(unknown)}")
        return cls(**payload)


def flips_allowed(spec) -> bool:
    """Whether a task declares that a horizontal mirror keeps every label (default: no)."""
    return bool(getattr(spec, "hflip_safe", False))


def random_affines(n: int, config: AugmentConfig, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """``n x 2 x 3`` maps from output to input coordinates (``affine_grid``'s convention)."""
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64)
    lo, hi = config.scale
    area = lo + (hi - lo) * u[:, 0]
    log_r = math.log(config.ratio[0]) + (math.log(config.ratio[1]) - math.log(config.ratio[0])) * u[:, 1]
    ratio = torch.exp(log_r)
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    # Centre anywhere the crop stays inside the image, then shifted by up to ``translate``.
    cx = (1 - width) * (2 * u[:, 2] - 1) + 2 * config.translate * (2 * u[:, 4] - 1)
    cy = (1 - height) * (2 * u[:, 3] - 1) + 2 * config.translate * (2 * u[:, 5] - 1)
    sx = width.clone()
    if flip and config.hflip:
        mirror = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
        sx = torch.where(mirror, -sx, sx)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = height, cy
    return theta.float()


def augment_images(
    images: torch.Tensor,
    config: AugmentConfig,
    *,
    flip: bool,
    generator: torch.Generator,
    masks: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Random views of a batch: float ``N x C x H x W`` in 0..1 (the backbone's input range).

    ``images``: uint8 (0..255) or float (0..1). ``flip``: whether the task allows mirrors
    (:func:`flips_allowed`). ``masks`` (``N x H x W`` int64, dense tasks): transformed with
    the same maps by nearest-neighbour sampling and returned as the second element.
    """
    if images.dim() != 4:
        raise FormatError(f"augmentation expects N x C x H x W images, got {tuple(images.shape)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    theta = random_affines(len(x), config, flip, generator).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).clamp_(0.0, 1.0)
    if masks is None:
        return out
    m = masks.unsqueeze(1).float()
    warped = F.grid_sample(m, F.affine_grid(theta, list(m.shape), align_corners=False), mode="nearest",
                           padding_mode="border", align_corners=False)
    return out, warped.squeeze(1).round().to(masks.dtype)


def view_generator(seed: int, epoch: int, step: int = 0) -> torch.Generator:
    """The generator of one batch's views: a pure function of (seed, epoch, step)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) * 10_007 + int(step))


__all__ = ["AugmentConfig", "augment_images", "flips_allowed", "random_affines", "view_generator"]

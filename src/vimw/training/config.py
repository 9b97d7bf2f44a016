"""Training settings, saved with every result so a number can be reproduced.

``FitConfig`` is what every trained thing shares and the fitting engine reads (epochs, batch,
AdamW rate and decay, warm-up, seed, gradient clipping); each loop's own settings extend it
(``TrainConfig`` here; TransMiter's teacher, extraction and refinement in ``vimw.transfer``).
The defaults here are the only ones: the command line and recipes read them from these classes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from vimw.errors import FormatError

# One gradient-norm clip for every loop: a few-shot step on a fresh head can be large, and a
# clipped step is never worse than an exploded one. A config that must not clip says None and why.
DEFAULT_GRAD_CLIP = 1.0

Config = TypeVar("Config", bound="FitConfig")


@dataclass(frozen=True)
class FitConfig:
    """What every training loop shares; ``vimw.training.engine.run_fit`` reads it."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    seed: int = 0
    grad_clip: float | None = DEFAULT_GRAD_CLIP

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise FormatError(f"epochs and batch sizes must be >= 1, got {self.epochs}, {self.batch_size}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or value > 1e3:
                raise FormatError(f"training setting {name}={value!r} must be a finite number in [0, 1000]")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise FormatError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.grad_clip is not None and (not math.isfinite(self.grad_clip) or self.grad_clip <= 0):
            raise FormatError(f"grad_clip must be a positive number or null, got {self.grad_clip!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[Config], payload: dict) -> Config:
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in payload.items() if k in known})
        except TypeError as exc:
            raise FormatError(f"invalid training settings {payload!r}: {exc}") from exc

    def replace(self: Config, **changes) -> Config:
        return type(self)(**{**self.to_dict(), **changes})


@dataclass(frozen=True)
class TrainConfig(FitConfig):
    """How a task model trains: the shared settings, plus evaluation batch, gate rate, augmentation.

    Saved as JSON with every module and downstream model.
    """

    eval_batch_size: int = 256
    gate_lr: float | None = None  # aggregation gates' learning rate (None: same as lr)
    # Random resized crops and shifts of the training images (mirrors only where the task
    # declares them label-safe); classification tasks only (vimw.data.augment).
    augment: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_batch_size < 1:
            raise FormatError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.gate_lr is not None and (not math.isfinite(self.gate_lr) or not 0 < self.gate_lr <= 1e3):
            raise FormatError(f"training setting gate_lr={self.gate_lr!r} must be a finite number in (0, 1000]")

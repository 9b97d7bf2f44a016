"""Training settings, saved with every result so a number can be reproduced."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from vimw.errors import FormatError


@dataclass(frozen=True)
class TrainConfig:
    """How a task model trains: epochs, batch, AdamW rates and decay, warm-up, seed, augmentation.

    Saved as JSON with every module and downstream model; the defaults here are the only
    ones (the command line reads them from this class).
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    seed: int = 0
    eval_batch_size: int = 256
    grad_clip: float | None = 1.0
    gate_lr: float | None = None  # aggregation gates' learning rate (None: same as lr)
    # Random resized crops and shifts of the training images (mirrors only where the task
    # declares them label-safe); classification tasks only (vimw.data.augment).
    augment: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise FormatError(f"epochs and batch sizes must be >= 1, got {self.epochs}, {self.batch_size}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or value > 1e3:
                raise FormatError(f"training setting {name}={value!r} must be a finite number in [0, 1000]")
        if self.gate_lr is not None and (not math.isfinite(self.gate_lr) or not 0 < self.gate_lr <= 1e3):
            raise FormatError(f"training setting gate_lr={self.gate_lr!r} must be a finite number in (0, 1000]")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise FormatError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in payload.items() if k in known})
        except TypeError as exc:
            raise FormatError(f"invalid training settings {payload!r}: {exc}") from exc

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig(**{**self.to_dict(), **changes})

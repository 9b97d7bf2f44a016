"""One optimiser update, shared by every training loop of vimw (modules, heads, TransMiter)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vimw.errors import TrainingError


def guarded_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    where: str,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    clip: tuple[Iterable[torch.Tensor], float] | None = None,
) -> None:
    """Backward pass and one step; a non-finite loss raises before any weight changes.

    ``where`` names the place for the error (e.g. "epoch 3, step 120"); ``clip`` is
    ``(parameters, max_norm)`` to clip the gradient norm before the step.
    """
    if not torch.isfinite(loss):
        raise TrainingError(
            f"{where}: the loss became {loss.item()}; the weights were not updated (try a lower learning rate)"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(*clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()

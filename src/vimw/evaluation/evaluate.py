"""Scoring a trained task model: logits in inference mode, loss and the task's metric.

Works on any model with the task-model surface (``backbone.preprocess``, ``kind``,
``__call__`` on pixels, optionally ``forward_cached``); it imports nothing from training.
"""

from __future__ import annotations

import torch
from torch import nn

from vimw.data import ImageSet
from vimw.data.kinds import DENSE_KINDS
from vimw.errors import DataError
from vimw.evaluation.metrics import accuracy, confusion_counts, mean_iou


def task_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; dense logits are resized to the mask's resolution first."""
    if logits.dim() == 4:  # dense: predict at the mask's own resolution
        if logits.shape[-2:] != targets.shape[-2:]:
            logits = nn.functional.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    return nn.functional.cross_entropy(logits, targets)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits for uint8 images, in inference mode, batched."""
    was_training = model.training
    if was_training:  # switching a model with many sub-modules costs more than a small batch
        model.eval()
    outputs = []
    cached = getattr(model, "can_use_prefix_cache", lambda: False)()
    for start in range(0, len(images), batch_size):
        if cached:  # the frozen prefix from the cache: same logits
            outputs.append(model.forward_cached(images, torch.arange(start, min(start + batch_size, len(images)))))
            continue
        pixels = model.backbone.preprocess(images[start : start + batch_size].to(model_device(model)))
        outputs.append(model(pixels))
    if was_training:
        model.train()
    return torch.cat(outputs).cpu()


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, batch_size: int = 256) -> dict[str, float]:
    """Loss and the task's metric (accuracy, or mIoU and pixel accuracy for dense tasks)."""
    if len(data) == 0:
        raise DataError(f"cannot evaluate on the empty split {data.name!r}")
    logits = predict_logits(model, data.images, batch_size)
    targets = data.targets
    loss = task_loss(logits, targets).item()
    if model.kind in DENSE_KINDS:
        if logits.shape[-2:] != targets.shape[-2:]:
            logits = nn.functional.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        predictions = logits.argmax(dim=1)
        confusion = confusion_counts(predictions, targets, logits.shape[1])
        return {
            "loss": loss,
            "miou": mean_iou(confusion),
            "pixel_accuracy": (predictions == targets).float().mean().item(),
            "score": mean_iou(confusion),
        }
    acc = accuracy(logits, targets)
    return {"loss": loss, "accuracy": acc, "score": acc}


def model_device(model: nn.Module) -> torch.device:
    """Where the model lives; batches are moved there (data stay on the CPU)."""
    return next(model.parameters()).device

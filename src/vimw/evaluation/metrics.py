"""Metrics as pure functions of predictions and targets."""

from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy of ``N x C`` logits against ``N`` class indices."""
    if targets.numel() == 0:
        return float("nan")
    return (logits.argmax(dim=1) == targets).float().mean().item()


def confusion_counts(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``num_classes x num_classes`` counts, rows = targets, columns = predictions."""
    flat = targets.reshape(-1).long() * num_classes + predictions.reshape(-1).long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean intersection-over-union over the classes present in targets or predictions."""
    confusion = confusion.double()
    intersection = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return (intersection[present] / union[present]).mean().item() if present.any() else float("nan")

"""Metrics and evaluation of trained models."""

from vimw.evaluation.metrics import accuracy, confusion_counts, mean_iou

__all__ = ["accuracy", "confusion_counts", "mean_iou"]

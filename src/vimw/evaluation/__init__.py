"""Evaluation: metrics, scoring a trained model, and the one rule that selects among candidates."""

from vimw.evaluation.evaluate import evaluate, model_device, predict_logits, task_loss
from vimw.evaluation.metrics import accuracy, confusion_counts, mean_iou

__all__ = ["accuracy", "confusion_counts", "evaluate", "mean_iou", "model_device", "predict_logits", "task_loss"]

"""vimw.evaluation: the metrics, scoring a model, and prediction, on hand-checked cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vimw.data import ImageSet
from vimw.errors import DataError
from vimw.evaluation import accuracy, confusion_counts, evaluate, mean_iou, predict_logits, task_loss


def test_accuracy_counts_top1_hits_and_is_nan_without_targets():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 2.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75
    assert math.isnan(accuracy(logits[:0], torch.tensor([], dtype=torch.long)))


def test_confusion_and_mean_iou_by_hand():
    predictions = torch.tensor([0, 0, 1, 2, 2])
    targets = torch.tensor([0, 1, 1, 2, 0])
    confusion = confusion_counts(predictions, targets, 3)
    assert confusion.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]  # rows: targets, columns: predictions
    # IoU per class: 1/(2+2-1) = 1/3, 1/(2+1-1) = 1/2, 1/(1+2-1) = 1/2
    assert mean_iou(confusion) == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert mean_iou(torch.zeros(2, 2)) != mean_iou(torch.zeros(2, 2))  # NaN: no class present


def test_dense_loss_is_computed_at_the_mask_resolution():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = 10.0  # every pixel says class 1
    masks = torch.ones(1, 4, 4, dtype=torch.long)
    assert task_loss(logits, masks).item() < 1e-3
    assert task_loss(logits, torch.zeros_like(masks)).item() > 5


class Counter(nn.Module):
    """A stand-in task model: logits = mean pixel per channel; counts its calls."""

    kind = "classification"

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = 0
        self.backbone = type("B", (), {"preprocess": staticmethod(lambda x: x.float() / 255.0)})()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.scale * pixels.mean(dim=(2, 3))


def test_predict_logits_batches_alike_and_restores_the_training_mode():
    model = Counter().train()
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    whole = predict_logits(model, images, batch_size=64)
    pieces = predict_logits(model, images, batch_size=3)
    torch.testing.assert_close(whole, pieces)
    assert model.training and model.calls == 1 + 4


def test_evaluate_scores_classification_and_refuses_an_empty_split():
    model = Counter()
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[:2, 1] = 255  # channel 1 brightest: predicted class 1
    data = ImageSet(images, torch.tensor([1, 1, 0, 2]), ("a", "b", "c"), "toy")
    metrics = evaluate(model, data)
    assert metrics["accuracy"] == metrics["score"] == 0.75  # the dark images predict class 0 (a tie, first index)
    with pytest.raises(DataError, match="empty"):
        evaluate(model, data.subset([], name="none"))

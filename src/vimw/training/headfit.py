"""Training only a head, on features computed once: linear probe, uniform, single and fitted gates.

When everything below the head is frozen (backbone, zoo modules, gates), an image's
features never change during training, so they are computed once per image and view
and the head trains on them: the same steps, schedule, validation and epoch choice as
``training.loop.fit`` (both run on the fitting engine), at a small part of the cost.

With augmentation the training images are seen through a fixed bank of ``views``
random views each (view 0 is the image itself); every step draws one view per image,
so the head sees the same distribution of views as a model that trains through the
backbone, from a finite sample of it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vimw.data import TaskData
from vimw.data.augment import AugmentConfig, augment_images, flips_allowed, view_generator
from vimw.evaluation.evaluate import task_loss
from vimw.evaluation.metrics import accuracy
from vimw.training.config import TrainConfig
from vimw.training.engine import FitResult, RunOutputs, run_fit
from vimw.training.loop import task_model_trainable
from vimw.training.task_model import TaskModel

DEFAULT_VIEWS = 8


def head_only(model: TaskModel) -> bool:
    """Whether only the head trains (so features can be computed once)."""
    head = {id(p) for p in model.head.parameters()}
    trainable = model.trainable_parameters()
    return bool(trainable) and all(id(p) in head for p in trainable) and model.kind == "classification"


@torch.no_grad()
def frozen_features(model: TaskModel, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Pooled features below the head for uint8 or float (0..1) images, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        pixels = model.backbone.preprocess(images[start:start + batch_size].to(device))
        out.append(model.backbone.forward_features(pixels, model.bypass()))
    model.train(was_training)
    return torch.cat(out)


def view_bank(model: TaskModel, data: TaskData, config: TrainConfig, views: int) -> torch.Tensor:
    """``views x n x D`` features of the training images: view 0 as is, the rest augmented."""
    images = data.train.images
    banks = [frozen_features(model, images, config.eval_batch_size)]
    augment = AugmentConfig()
    flip = flips_allowed(data.spec)
    for view in range(1, views):
        seen = augment_images(images, augment, flip=flip, generator=view_generator(config.seed, 10_000 + view))
        banks.append(frozen_features(model, seen, config.eval_batch_size))
    return torch.stack(banks)


def fit_head(model: TaskModel, data: TaskData, config: TrainConfig, *, views: int = DEFAULT_VIEWS,
             progress: bool | None = False, on_epoch_end: Callable[[int, dict], None] | None = None,
             stop: Callable[[], bool] | None = None, keep_last: bool = False) -> FitResult:
    """Train ``model.head`` on cached features; choose the epoch on validation like ``fit``
    (``keep_last``: keep the last epoch, no validation images needed, as ``fit``)."""
    augmenting = bool(getattr(config, "augment", False))
    bank = view_bank(model, data, config, views if augmenting else 1)
    targets = data.train.targets.to(bank.device)
    if not keep_last:
        val_features = frozen_features(model, data.val.images, config.eval_batch_size)
        val_targets = data.val.targets.to(val_features.device)
    n = len(targets)
    steps_per_epoch = -(-n // config.batch_size)
    torch.manual_seed(config.seed)

    def batches(epoch: int):
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator)
        chosen = torch.randint(0, bank.shape[0], (n,), generator=generator)
        for start in range(0, n, config.batch_size):
            index = order[start:start + config.batch_size]
            yield index, chosen[index]

    def loss(batch) -> torch.Tensor:
        index, view = batch
        return task_loss(model.head(bank[view, index]), targets[index])

    @torch.no_grad()
    def validate() -> dict[str, float]:
        was_training = model.head.training
        model.head.eval()
        logits = model.head(val_features)
        model.head.train(was_training)
        acc = accuracy(logits.cpu(), val_targets.cpu())
        return {"loss": task_loss(logits, val_targets).item(), "accuracy": acc, "score": acc}

    return run_fit(
        task_model_trainable(model, config, train_mode=model.head.train),
        batches,
        loss,
        config=config,
        steps_per_epoch=steps_per_epoch,
        validate=None if keep_last else validate,
        outputs=RunOutputs(settings={"train": config.to_dict(), "task": data.spec.name, "views": views},
                           progress=progress, desc="head"),
        on_epoch_end=on_epoch_end,
        stop=stop,
    )


__all__ = ["DEFAULT_VIEWS", "fit_head", "frozen_features", "head_only", "view_bank"]

"""Training a task model (plug-in + head, or full fine-tuning) on one task, on the engine.

What is specific to image tasks lives here: the data order (a pure function of seed and
epoch, so a resumed run sees the same batches), sharding under torchrun (each rank trains
on its shard; DistributedDataParallel syncs gradients), the prefix cache and the task
loss. Schedule, validation, epoch selection, checkpoints, logs and the non-finite guard
are the fitting engine's (``vimw.training.engine``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from vimw.data import TaskData
from vimw.data.augment import AugmentConfig, augment_images, flips_allowed, view_generator
from vimw.errors import DataError, TrainingError
from vimw.evaluation.evaluate import evaluate, model_device, task_loss
from vimw.training import distributed as dist_utils
from vimw.training.config import TrainConfig
from vimw.training.engine import FitResult, RunOutputs, Trainable, run_fit
from vimw.training.task_model import TaskModel

__all__ = ["FitResult", "fit", "parameter_groups", "task_model_trainable"]


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator)


def parameter_groups(model: TaskModel, config: TrainConfig) -> list[dict]:
    """AdamW groups of ``model``; ``config.gate_lr`` sets the group a plug-in names ``"gates"``."""
    return model.parameter_groups(config.lr, {"gates": config.gate_lr} if config.gate_lr else None)


def task_model_trainable(model: TaskModel, config: TrainConfig, train_mode=None) -> Trainable:
    """What ``run_fit`` trains of a task model under ``config`` (``train_mode``: default the model's)."""
    return Trainable(
        groups=parameter_groups(model, config),
        snapshot=model.trainable_state,
        restore=lambda state: model.load_state_dict(state, strict=False),
        train_mode=train_mode or model.train,
    )


def fit(
    model: TaskModel,
    data: TaskData,
    config: TrainConfig,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | None = None,
    log_path: str | os.PathLike | None = None,
    tensorboard_dir: str | os.PathLike | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    prefix_cache: int | None = None,
    stop: Callable[[], bool] | None = None,
    keep_last: bool = False,
) -> FitResult:
    """Train the trainable parameters of ``model`` on ``data.train``; select on ``data.val``.

    ``keep_last``: no epoch is chosen (true few-shot: no validation images); the run trains
    its configured steps and keeps the last state, and ``data.val`` may be empty.

    ``prefix_cache``: a byte limit to enable ``model.enable_prefix_cache`` (frozen
    prefix computed once per image); a cache already attached to ``model`` is used
    as is. Single-process runs only (under DDP the model runs uncached).
    ``log_path`` / ``tensorboard_dir``: per-epoch records as JSON lines / TensorBoard
    scalars (written by rank 0). ``stop``: asked after every step; when it answers yes the run
    ends there (see ``run_fit``).
    """
    if len(data.train) == 0:
        raise DataError(f"task {data.spec.name!r}: the training split is empty")
    if len(data.val) == 0 and not keep_last:
        raise DataError(f"task {data.spec.name!r}: the validation split is empty")
    if not model.trainable_parameters():
        raise TrainingError("the model has no trainable parameters")

    dist_utils.init_from_env()
    rank, world = dist_utils.rank(), dist_utils.world_size()
    torch.manual_seed(config.seed)
    per_rank = -(-len(data.train) // world)
    steps_per_epoch = -(-per_rank // config.batch_size)

    device = model_device(model)
    runner: nn.Module = model
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(model)
    if prefix_cache is not None and getattr(model, "prefix_cache", None) is None:
        model.enable_prefix_cache(prefix_cache)
    cached = world == 1 and getattr(model, "can_use_prefix_cache", lambda: False)()
    images, targets = data.train.images, data.train.targets
    # Augmented views differ at every step (so the prefix cache cannot serve them); the
    # views of a batch are a pure function of (seed, epoch, position): resumable.
    augment = AugmentConfig() if config.augment and data.kind == "classification" else None
    flip = flips_allowed(data.spec)
    cached = cached and augment is None

    def batches(epoch: int):
        order = dist_utils.shard(_epoch_order(len(data.train), config.seed, epoch), rank, world)
        for start in range(0, len(order), config.batch_size):
            yield order[start : start + config.batch_size], (epoch, start)

    def loss(batch) -> torch.Tensor:
        index, (epoch, start) = batch
        if cached:  # frozen prefix computed once per image (TaskModel.enable_prefix_cache)
            logits = model.forward_cached(images, index)
        elif augment is not None:
            views = augment_images(images[index], augment, flip=flip,
                                   generator=view_generator(config.seed, epoch, start + 1_000_003 * rank))
            logits = runner(model.backbone.preprocess(views.to(device)))
        else:
            logits = runner(model.backbone.preprocess(images[index].to(device)))
        return task_loss(logits, targets[index].to(device))

    return run_fit(
        task_model_trainable(model, config),
        batches,
        loss,
        config=config,
        steps_per_epoch=steps_per_epoch,
        validate=None if keep_last else (lambda: evaluate(model, data.val, config.eval_batch_size)),
        outputs=RunOutputs(checkpoint_dir=checkpoint_dir, resume=resume,
                           settings={"train": config.to_dict(), "task": data.spec.name}, log_path=log_path,
                           tensorboard_dir=tensorboard_dir, progress=progress, desc="train"),
        on_epoch_end=on_epoch_end,
        stop=stop,
    )

"""The one fitting engine behind every trained thing in vimw.

Modules and heads (``training.loop.fit``), TransMiter extraction, refinement and the
fine-tuned teacher all train here. A caller supplies what is specific to it: its AdamW
parameter groups, its batches, its loss, how to validate and how to snapshot and restore
what trains. The engine owns what must be the same everywhere:

- the schedule (:func:`cosine_lr`: linear warm-up, then cosine decay to zero);
- the non-finite guard (``training.step.guarded_step``: nothing is updated by a NaN loss);
- per-epoch validation and the choice of the epoch to keep, by the one selection rule
  (``evaluation.selection``), never an epoch that ends inside the warm-up;
- checkpoints after every epoch and resuming from them (``training.checkpoint``);
- progress bars and the run log (JSON lines and optionally TensorBoard), on rank 0.

Under torchrun the caller shards its batches and wraps its model in DDP; the engine
averages the reported loss over ranks and lets only rank 0 write.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from vimw.errors import TrainingError
from vimw.evaluation.selection import DEFAULT_CRITERION, is_better
from vimw.training import distributed as dist_utils
from vimw.training.config import FitConfig
from vimw.training.checkpoint import TrainingState, has_checkpoint, load_checkpoint, save_checkpoint
from vimw.training.progress import progress_bar, progress_enabled, progress_write
from vimw.training.run_log import RunLog
from vimw.training.step import guarded_step

log = logging.getLogger(__name__)

Batch = Any  # a tensor or a tuple of tensors; the first tensor's length counts images


# -- the schedule ---------------------------------------------------------------------------
def warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    """Number of warm-up steps: at least one when the fraction is positive."""
    return max(1, int(round(total_steps * warmup_fraction))) if warmup_fraction > 0 else 0


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_fraction: float) -> float:
    """Linear warm-up then cosine decay to zero; a pure function of the step."""
    warmup = warmup_steps(total_steps, warmup_fraction)
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# -- the result ------------------------------------------------------------------------------
@dataclass
class FitResult:
    """What a fit produced: the kept epoch, its validation metrics and the whole history."""

    best_score: float
    best_epoch: int  # 0 is the starting state (only with ``include_start``)
    history: list[dict]
    best_state: dict[str, torch.Tensor]
    seconds: float
    images_seen: int
    best_metrics: dict[str, float] = field(default_factory=dict)
    stopped: bool = False  # cut short by ``stop()``: the kept state is the best of what ran

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.seconds if self.seconds > 0 else float("nan")


def _batch_size(batch: Batch) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return len(first) if hasattr(first, "__len__") else 1


def _val_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    return {k[4:]: v for k, v in record.items() if k.startswith("val_")}


def check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], where: Any) -> None:
    """Refuse to continue a checkpoint made with other settings: it would mix two runs."""
    differing = sorted(k for k in current if k in saved and saved[k] != current[k])
    if differing:
        details = ", ".join(f"{k}: checkpoint {saved[k]!r} vs now {current[k]!r}" for k in differing)
        raise TrainingError(f"{where}: the checkpoint was made with other training settings ({details}); "
                            "resume with the same settings or start afresh without --resume")


# -- what a run trains, and where it reports -------------------------------------------------------
@dataclass
class Trainable:
    """What the engine trains: AdamW parameter groups, and how to snapshot and restore them.

    Each group carries its own ``"lr"`` (and optionally ``"weight_decay"``); the schedule
    scales every group's rate alike. ``train_mode(flag)`` switches dropout and the like.
    """

    groups: list[dict]
    snapshot: Callable[[], dict[str, torch.Tensor]]
    restore: Callable[[dict[str, torch.Tensor]], None]
    train_mode: Callable[[bool], None] | None = None


@dataclass(frozen=True)
class RunOutputs:
    """Where a run reports: checkpoints (and resuming from them), its log, TensorBoard, progress bars.

    ``settings`` are saved with each checkpoint; resuming with other settings is refused.
    """

    checkpoint_dir: str | os.PathLike | None = None
    resume: bool = False
    settings: Mapping[str, Any] | None = None
    log_path: str | os.PathLike | None = None
    tensorboard_dir: str | os.PathLike | None = None
    progress: bool | None = None
    desc: str = "train"


# -- the engine ---------------------------------------------------------------------------------
def run_fit(
    trainable: Trainable,
    batches: Callable[[int], Iterable[Batch]],
    loss: Callable[[Batch], torch.Tensor],
    *,
    config: FitConfig,
    steps_per_epoch: int,
    validate: Callable[[], Mapping[str, float]] | None = None,
    include_start: bool = False,
    criterion: str = DEFAULT_CRITERION,
    outputs: RunOutputs = RunOutputs(),
    on_epoch_end: Callable[[int, dict], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Train ``trainable`` with AdamW for ``config.epochs`` x ``steps_per_epoch`` steps.

    ``config`` gives the schedule (warm-up fraction, epochs), weight decay and gradient
    clipping. ``batches(epoch)`` yields that epoch's batches (make it a pure function of the
    epoch so a resumed run sees the same data); ``loss(batch)`` returns a scalar.
    ``validate()`` returns held-out metrics with ``"score"`` (higher is better) and ``"loss"``;
    without it the last epoch is kept. The kept state is restored before returning.
    ``stop()`` is asked after every step: when it says so (a deadline), the epoch ends there,
    is validated like any other, and the run returns with ``stopped`` set.
    """
    epochs, warmup_fraction, grad_clip = config.epochs, config.warmup_fraction, config.grad_clip
    groups, snapshot, restore, train_mode = trainable.groups, trainable.snapshot, trainable.restore, trainable.train_mode
    checkpoint_dir, desc = outputs.checkpoint_dir, outputs.desc
    if epochs < 1 or steps_per_epoch < 1:
        raise TrainingError(f"epochs and steps per epoch must be >= 1, got {epochs} and {steps_per_epoch}")
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise TrainingError("nothing to train: the parameter groups are empty")
    for group in groups:
        group.setdefault("base_lr", group["lr"])
    optimizer = torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=config.weight_decay)
    total_steps = epochs * steps_per_epoch
    warm = warmup_steps(total_steps, warmup_fraction)
    settings = dict(outputs.settings or {})

    state = TrainingState(settings=settings)
    if outputs.resume and checkpoint_dir is not None and has_checkpoint(checkpoint_dir):
        state = load_checkpoint(checkpoint_dir)
        check_resumable(state.settings, settings, checkpoint_dir)
        missing = set(snapshot()) - set(state.model)
        if missing:
            raise TrainingError(f"checkpoint does not match the model: missing {sorted(missing)[:5]}")
        restore(state.model)
        optimizer.load_state_dict(state.optimizer)
        if state.rng is not None:
            torch.set_rng_state(state.rng)
    main = dist_utils.is_main_process()
    run_log = RunLog(outputs.log_path, outputs.tensorboard_dir) if main else RunLog()
    show = progress_enabled(outputs.progress)

    best_metrics: dict[str, float] | None = None
    if state.best_epoch >= 0:
        best_metrics = _val_metrics(next(r for r in state.history if r["epoch"] == state.best_epoch))

    def consider(record: dict, eligible: bool) -> None:
        nonlocal best_metrics
        metrics = _val_metrics(record)
        if eligible and (validate is None or is_better(metrics, best_metrics, criterion)):
            best_metrics = metrics
            state.best_score = float(metrics.get("score", float("nan")))
            state.best_epoch = record["epoch"]
            state.best = {k: v.detach().clone() for k, v in snapshot().items()}

    if include_start and validate is not None and state.epoch == 0 and not state.history:
        record = {"epoch": 0, "step": 0, "train_loss": float("nan"), "lr": 0.0, "in_warmup": False,
                  **{f"val_{k}": v for k, v in validate().items()}}
        state.history.append(record)
        consider(record, eligible=True)
        if main:
            run_log.write(record)

    started, images_seen, stopped = time.perf_counter(), 0, False
    try:
        for epoch in range(state.epoch, epochs):
            if train_mode is not None:
                train_mode(True)
            running, count, epoch_images, epoch_start = 0.0, 0, 0, time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            bar = progress_bar(steps_per_epoch, f"{desc} {epoch + 1}/{epochs}", show, unit="step")
            for batch in batches(epoch):
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(state.step, total_steps, group["base_lr"], warmup_fraction)
                lr = optimizer.param_groups[0]["lr"]
                value = loss(batch)
                guarded_step(value, optimizer, f"{desc}: epoch {epoch + 1}, step {state.step + 1}",
                             clip=(params, grad_clip) if grad_clip else None)
                state.step += 1
                running += value.item()
                count += 1
                epoch_images += _batch_size(batch)
                bar.update(1)
                bar.set_postfix(loss=f"{running / count:.4f}")
                if stop is not None and stop():
                    stopped = True
                    break
            bar.close()
            images_seen += epoch_images
            seconds = time.perf_counter() - epoch_start
            record = {
                "epoch": epoch + 1,
                "step": state.step,
                "train_loss": dist_utils.average(running / max(1, count)),
                "lr": lr,
                "images_per_second": epoch_images * dist_utils.world_size() / max(seconds, 1e-9),
                "in_warmup": state.step < warm,
            }
            if validate is not None:
                record.update({f"val_{k}": v for k, v in validate().items()})
            state.history.append(record)
            consider(record, eligible=not record["in_warmup"])
            state.epoch = epoch + 1
            if main:
                summary = f"{desc} epoch {epoch + 1}/{epochs}: train loss {record['train_loss']:.4f}"
                if validate is not None:
                    summary += f", val score {record.get('val_score', float('nan')):.4f}, val loss {record.get('val_loss', float('nan')):.4f}"
                progress_write(summary) if show else log.debug(summary)
                run_log.write(record)
                if checkpoint_dir is not None:
                    state.model = snapshot()
                    state.optimizer = optimizer.state_dict()
                    state.rng = torch.get_rng_state()
                    save_checkpoint(checkpoint_dir, state)
            dist_utils.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)
            if stopped:
                break
    finally:
        run_log.close()
        if train_mode is not None:
            train_mode(False)
    if state.best:
        restore(state.best)
    return FitResult(
        best_score=state.best_score,
        best_epoch=state.best_epoch,
        history=state.history,
        best_state=state.best,
        seconds=time.perf_counter() - started,
        images_seen=images_seen,
        best_metrics=dict(best_metrics or {}),
        stopped=stopped,
    )


__all__ = ["FitResult", "RunOutputs", "Trainable", "check_resumable", "cosine_lr", "run_fit", "warmup_steps"]

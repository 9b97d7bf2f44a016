"""The one training loop: any ``TaskModel`` (plug-in + head, or full fine-tuning) on one task.

- AdamW over the trainable parameters only, linear warmup + cosine decay.
- Validation every epoch; the best epoch *by validation score* is what is returned.
- A checkpoint after every epoch (``checkpoint_dir``), resumable with ``resume=True``:
  data order is a pure function of (seed, epoch) and the RNG state is saved, so a
  resumed run ends with the same numbers as an uninterrupted one.
- Under torchrun (``WORLD_SIZE`` > 1): DistributedDataParallel, each rank trains on its
  shard of every epoch; rank 0 writes checkpoints and logs.
- A NaN or infinite loss stops training with ``TrainingError`` before anything is saved.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from vimw.data import TaskData
from vimw.errors import DataError, TrainingError
from vimw.evaluation.evaluate import evaluate, model_device, task_loss
from vimw.training import distributed as dist_utils
from vimw.training.checkpoint import TrainingState, has_checkpoint, load_checkpoint, save_checkpoint
from vimw.training.config import TrainConfig, cosine_lr
from vimw.training.run_log import RunLog
from vimw.training.step import guarded_step
from vimw.training.task_model import TaskModel

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    best_score: float
    best_epoch: int
    history: list[dict]
    best_state: dict[str, torch.Tensor]
    seconds: float
    images_seen: int

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.seconds if self.seconds > 0 else float("nan")


def progress_enabled(requested: bool | None) -> bool:
    if requested is not None:
        return requested and dist_utils.is_main_process()
    if os.environ.get("VIMW_PROGRESS", "") == "0":
        return False
    return dist_utils.is_main_process() and sys.stderr.isatty()


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator)


def parameter_groups(model: TaskModel, config: TrainConfig) -> list[dict]:
    """AdamW groups: aggregation gates get their own learning rate and no weight decay.

    Adam moves a parameter by about its learning rate per step whatever the gradient's
    size, so with the head's rate (1e-3..1e-2) gate logits barely leave uniform in a
    few-shot run; ``gate_lr`` lets them move by O(1). Decay would pull them back.
    """
    gates = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("gate_logits")]
    gate_ids = {id(p) for p in gates}
    others = [p for p in model.trainable_parameters() if id(p) not in gate_ids]
    groups = [{"params": others, "base_lr": config.lr}] if others else []
    if gates:
        groups.append({"params": gates, "base_lr": config.gate_lr or config.lr, "weight_decay": 0.0})
    return groups


def check_resumable(saved: dict, config: TrainConfig, where) -> None:
    """Refuse to continue a checkpoint made with other settings: it would mix two runs."""
    current = config.to_dict()
    differing = sorted(k for k in current if k in saved and saved[k] != current[k])
    if differing:
        details = ", ".join(f"{k}: checkpoint {saved[k]!r} vs now {current[k]!r}" for k in differing)
        raise TrainingError(f"{where}: the checkpoint was made with other training settings ({details}); "
                            "resume with the same settings or start afresh without --resume")


def _restore(model: TaskModel, optimizer: torch.optim.Optimizer, state: TrainingState) -> None:
    missing = set(model.trainable_state()) - set(state.model)
    if missing:
        raise TrainingError(f"checkpoint does not match the model: missing {sorted(missing)[:5]}")
    model.load_state_dict(state.model, strict=False)
    optimizer.load_state_dict(state.optimizer)
    if state.rng is not None:
        torch.set_rng_state(state.rng)


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
) -> FitResult:
    """Train the trainable parameters of ``model`` on ``data.train``; select on ``data.val``.

    ``prefix_cache``: a byte limit to enable ``model.enable_prefix_cache`` (frozen
    prefix computed once per image); a cache already attached to ``model`` is used
    as is. Single-process runs only (under DDP the model runs uncached).
    ``log_path`` / ``tensorboard_dir``: per-epoch records as JSON lines / TensorBoard
    scalars (written by rank 0).
    """
    if len(data.train) == 0:
        raise DataError(f"task {data.spec.name!r}: the training split is empty")
    if len(data.val) == 0:
        raise DataError(f"task {data.spec.name!r}: the validation split is empty")
    params = model.trainable_parameters()
    if not params:
        raise TrainingError("the model has no trainable parameters")

    dist_utils.init_from_env()
    rank, world = dist_utils.rank(), dist_utils.world_size()
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    per_rank = -(-len(data.train) // world)
    steps_per_epoch = -(-per_rank // config.batch_size)
    total_steps = steps_per_epoch * config.epochs

    state = TrainingState(settings={"train": config.to_dict(), "task": data.spec.name})
    if resume and checkpoint_dir is not None and has_checkpoint(checkpoint_dir):
        state = load_checkpoint(checkpoint_dir)
        check_resumable(state.settings.get("train", {}), config, checkpoint_dir)
        _restore(model, optimizer, state)

    device = model_device(model)
    run_log = RunLog(log_path, tensorboard_dir) if dist_utils.is_main_process() else RunLog()
    runner: nn.Module = model
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(model)
    if prefix_cache is not None and getattr(model, "prefix_cache", None) is None:
        model.enable_prefix_cache(prefix_cache)
    cached = world == 1 and getattr(model, "can_use_prefix_cache", lambda: False)()

    show = progress_enabled(progress)
    started, images_seen = time.perf_counter(), 0
    for epoch in range(state.epoch, config.epochs):
        model.train()
        order = dist_utils.shard(_epoch_order(len(data.train), config.seed, epoch), rank, world)
        running, batches, epoch_start = 0.0, 0, time.perf_counter()
        bar = tqdm(total=len(order), desc=f"epoch {epoch + 1}/{config.epochs}", unit="img", disable=not show, leave=False)
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(state.step, total_steps, group["base_lr"], config.warmup_fraction)
            lr = optimizer.param_groups[0]["lr"]
            if cached:  # frozen prefix computed once per image (TaskModel.enable_prefix_cache)
                logits = model.forward_cached(data.train.images, index)
            else:
                logits = runner(model.backbone.preprocess(data.train.images[index].to(device)))
            loss = task_loss(logits, data.train.targets[index].to(device))
            guarded_step(loss, optimizer, f"epoch {epoch + 1}, step {state.step}",
                         clip=(params, config.grad_clip) if config.grad_clip else None)
            state.step += 1
            running += loss.item()
            batches += 1
            images_seen += len(index)
            bar.update(len(index))
            bar.set_postfix(loss=f"{running / batches:.4f}")
        bar.close()
        epoch_seconds = time.perf_counter() - epoch_start
        metrics = evaluate(model, data.val, config.eval_batch_size)
        record = {
            "epoch": epoch + 1,
            "train_loss": dist_utils.average(running / max(1, batches)),
            "lr": lr,
            "images_per_second": len(order) * world / max(epoch_seconds, 1e-9),
            **{f"val_{k}": v for k, v in metrics.items()},
        }
        state.history.append(record)
        if metrics["score"] > state.best_score:
            state.best_score, state.best_epoch = metrics["score"], epoch + 1
            state.best = model.trainable_state()
        state.epoch = epoch + 1
        if dist_utils.is_main_process():
            summary = (f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, "
                       f"val {metrics['score']:.4f} ({record['images_per_second']:.0f} img/s)")
            if show:
                tqdm.write(summary)
            else:  # no bars (not a terminal): one line per epoch for whoever configured logging
                log.debug(summary)
            run_log.write(record)
            if checkpoint_dir is not None:
                state.model = model.trainable_state()
                state.optimizer = optimizer.state_dict()
                state.rng = torch.get_rng_state()
                save_checkpoint(checkpoint_dir, state)
        dist_utils.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)

    run_log.close()
    if state.best:
        model.load_state_dict(state.best, strict=False)
    return FitResult(
        best_score=state.best_score,
        best_epoch=state.best_epoch,
        history=state.history,
        best_state=state.best,
        seconds=time.perf_counter() - started,
        images_seen=images_seen,
    )

"""Extraction, transfer and refinement of a TransMiter adapter (SPEC 2.3 - 2.5).

* :func:`extract_adapter` - unsupervised: distil the fine-tuned weak model's task logits
  (teacher) into an adapter on the weak model's zero-shot logits. It takes no labels, by
  construction: its only data arguments are the two logit matrices.
* :func:`transfer_adapter` - no backpropagation: align the target model's standardised logits
  to the source's with a regularised orthogonal Procrustes rotation and return a copy of the
  source adapter that applies it.
* :func:`refine_adapter` - TransMiter+: a few epochs of cross-entropy on labelled base classes,
  keeping the epoch with the best validation accuracy.
* :func:`choose_lambda` - pick the Procrustes lambda (per image) on labelled validation data.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from vimw.errors import DataError
from vimw.training.engine import cosine_lr
from vimw.training.step import guarded_step
from vimw.transfer.adapter import TransMiterAdapter
from vimw.transfer.procrustes import DEFAULT_LAMBDA_PER_IMAGE, normalised_lambda, orthogonal_alignment
from vimw.transfer.standardize import standardize


@dataclass(frozen=True)
class ExtractionConfig:
    """Settings of :func:`extract_adapter`; the defaults are the reference's (SPEC 2.3)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-3
    warmup_fraction: float = 0.05
    tau: float = 1.0
    teacher_temperature: float = 0.5
    noise_prob: float = 0.5
    noise_scale: float = 0.5
    hidden_mult: int = 4
    orthogonal_map: str = "cayley"
    seed: int = 0
    progress: bool | None = None  # None: show a progress bar only on a terminal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RefineConfig:
    """Settings of :func:`refine_adapter` (TransMiter+, SPEC 2.5); choose on validation data."""

    epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 1e-3
    batch_size: int = 128
    warmup_fraction: float = 0.05
    seed: int = 0
    progress: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- helpers -------------------------------------------------------------------------------
def _show_progress(progress: bool | None) -> bool:
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


def _tqdm(iterable: Iterable, *, total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False)


def _check_logits(name: str, z: torch.Tensor, *, cols: int | None = None) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise DataError(f"{name}: expected a tensor, got {type(z).__name__}")
    if z.dim() != 2 or z.shape[0] == 0:
        raise DataError(f"{name}: expected a non-empty N x K matrix of logits, got shape {tuple(z.shape)}")
    if cols is not None and z.shape[1] != cols:
        raise DataError(f"{name}: expected {cols} columns, got {z.shape[1]}")
    z = z.detach().float()
    if not torch.isfinite(z).all():
        raise DataError(f"{name}: logits contain NaN or infinite values")
    return z


def _check_labels(name: str, labels: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.numel() != n:
        raise DataError(f"{name}: {labels.numel()} labels for {n} logit rows")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{name}: labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return labels


def _warmup_cosine(total_steps: int, warmup_fraction: float):
    """LambdaLR factor: the training loop's warmup + cosine schedule on a unit rate."""

    def factor(step: int) -> float:  # step counts optimizer steps already taken
        return cosine_lr(step, total_steps, 1.0, warmup_fraction)

    return factor


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, tau: float = 1.0, teacher_temperature: float = 0.5
) -> torch.Tensor:
    """``tau^2 T_t KL(softmax(y / (tau T_t)) || softmax(z / tau))``, batch mean (SPEC 2.3)."""
    target = F.log_softmax(teacher_logits / (tau * teacher_temperature), dim=-1)
    student = F.log_softmax(student_logits / tau, dim=-1)
    kl = F.kl_div(student, target, reduction="batchmean", log_target=True)
    return (tau**2) * teacher_temperature * kl


# -- extraction -------------------------------------------------------------------------------
def extract_adapter(
    source_zs_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    config: ExtractionConfig | None = None,
) -> tuple[TransMiterAdapter, list[dict[str, float]]]:
    """Distil the fine-tuned weak model into a new adapter, without labels (SPEC 2.3).

    Args:
        source_zs_logits: the weak model's zero-shot logits, N x K (task classes first).
        teacher_logits: the fine-tuned weak model's logits on the same images, N x C.
        config: :class:`ExtractionConfig` (seed, epochs, ...).

    Returns ``(adapter, history)``: ``history[i] = {"epoch": i + 1, "loss": mean KD loss, "lr": ...}``.
    Deterministic for a given seed (CPU). Raises ``TrainingError`` if the loss is not finite.
    """
    cfg = config or ExtractionConfig()
    z = _check_logits("source_zs_logits", source_zs_logits)
    y = _check_logits("teacher_logits", teacher_logits)
    n, k = z.shape
    c = y.shape[1]
    if y.shape[0] != n:
        raise DataError(f"teacher_logits has {y.shape[0]} rows, source_zs_logits has {n}")
    if c > k:
        raise DataError(f"teacher has C={c} classes, more than the K={k} zero-shot logits")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("epochs and batch_size must be positive")

    adapter = TransMiterAdapter(k, c, hidden_mult=cfg.hidden_mult, seed=cfg.seed, orthogonal_map=cfg.orthogonal_map)
    adapter.train()
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(cfg.epochs * steps_per_epoch, cfg.warmup_fraction)
    )
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    show = _show_progress(cfg.progress)
    history: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        bar = _tqdm(range(steps_per_epoch), total=steps_per_epoch, desc=f"extract {epoch + 1}/{cfg.epochs}", enabled=show)
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            zb, yb = z[idx], y[idx]
            # Both draws happen every step so the random stream does not depend on the coin.
            coin = torch.rand((), generator=gen).item()
            eps = torch.randn(zb.shape, generator=gen)
            if coin < cfg.noise_prob:
                zb = zb + eps * (cfg.noise_scale * zb.std(dim=1, keepdim=True))
            loss = kd_loss(adapter(zb), yb, tau=cfg.tau, teacher_temperature=cfg.teacher_temperature)
            guarded_step(loss, optimizer, f"extraction (KD), epoch {epoch + 1}, step {step + 1}", scheduler=scheduler)
            total += loss.item() * len(idx)
            count += len(idx)
            if show:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        history.append({"epoch": epoch + 1, "loss": total / count, "lr": optimizer.param_groups[0]["lr"]})
    adapter.eval()
    return adapter, history


# -- transfer -------------------------------------------------------------------------------
def transfer_adapter(
    source_adapter: TransMiterAdapter,
    source_zs_logits_unlabeled: torch.Tensor,
    target_zs_logits_unlabeled: torch.Tensor,
    lam_per_image: float = DEFAULT_LAMBDA_PER_IMAGE,
) -> TransMiterAdapter:
    """A copy of ``source_adapter`` for the target model, with no backpropagation (SPEC 2.4).

    Both logit matrices are the two zero-shot models' outputs on the same unlabeled images
    (row for row, same K prompts). Runs entirely under ``torch.no_grad()``: standardise both,
    compute ``Q0`` (``T Q0 ~ S``) and return ``f_target(s) = f_source(s Q0) Q0^T``. If the source
    adapter is itself a transferred one (rotation R), the rotations compose (``Q0 R``).
    """
    with torch.no_grad():
        k = source_adapter.num_logits
        s = _check_logits("source_zs_logits_unlabeled", source_zs_logits_unlabeled, cols=k)
        t = _check_logits("target_zs_logits_unlabeled", target_zs_logits_unlabeled, cols=k)
        if s.shape[0] != t.shape[0]:
            raise DataError(f"source has {s.shape[0]} images, target has {t.shape[0]}: they must be the same images")
        s_std = standardize(s)[0]
        t_std = standardize(t)[0]
        q0 = orthogonal_alignment(s_std, t_std, normalised_lambda(lam_per_image, s.shape[0]))
        if source_adapter.rotation is not None:
            q0 = q0 @ source_adapter.rotation.to(torch.float64)
        target = copy.deepcopy(source_adapter)
        target.set_rotation(q0)
        target.eval()
        return target


# -- refinement (TransMiter+) ---------------------------------------------------------------------
def _columns(adapter: TransMiterAdapter, classes: Sequence[int] | None) -> torch.Tensor:
    if classes is None:
        return torch.arange(adapter.num_classes)
    cols = torch.as_tensor(list(classes), dtype=torch.long)
    if cols.numel() == 0 or cols.min() < 0 or cols.max() >= adapter.num_classes or cols.unique().numel() != cols.numel():
        raise DataError(f"classes must be distinct column indices in [0, {adapter.num_classes})")
    return cols


@torch.no_grad()
def adapter_accuracy(
    adapter: TransMiterAdapter,
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    classes: Sequence[int] | None = None,
    batch_size: int = 1024,
) -> float:
    """Top-1 accuracy of ``adapter`` on zero-shot ``logits``; labels index the task columns.

    With ``classes`` (column indices), the argmax runs over those columns only and the labels
    must be among them (the base-to-novel protocol, SPEC 2.6).
    """
    was_training = adapter.training
    adapter.eval()
    try:
        cols = _columns(adapter, classes)
        z = _check_logits("logits", logits, cols=adapter.num_logits)
        y = _check_labels("labels", labels, z.shape[0], adapter.num_classes)
        with parametrize.cached():
            out = torch.cat([adapter(z[i : i + batch_size]) for i in range(0, z.shape[0], batch_size)])
        pred = cols[out[:, cols].argmax(dim=1)]
        return float((pred == y).float().mean().item())
    finally:
        adapter.train(was_training)


def refine_adapter(
    adapter: TransMiterAdapter,
    target_zs_logits: torch.Tensor,
    labels: torch.Tensor,
    val_logits: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    classes: Sequence[int] | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    config: RefineConfig | None = None,
) -> tuple[TransMiterAdapter, list[dict[str, float]]]:
    """TransMiter+: fine-tune a (transferred) adapter on a few labelled target examples.

    Cross-entropy over the labelled base classes: ``labels`` index the adapter's C task
    columns; with ``classes`` (column indices) the softmax runs over those columns only and
    every label must be one of them. All adapter parameters train (the transfer rotation is
    a fixed buffer). After each epoch the validation accuracy (same columns) is measured; the
    returned adapter (a new copy; the input is left untouched) has the weights of the best
    epoch, where epoch 0 (the starting adapter) is a candidate too.

    Returns ``(adapter, history)`` with ``{"epoch", "loss", "val_accuracy", "best"}`` per epoch.
    """
    cfg = config or RefineConfig()
    if epochs is not None or lr is not None:
        cfg = RefineConfig(**{**cfg.to_dict(), **({"epochs": epochs} if epochs is not None else {}),
                              **({"lr": lr} if lr is not None else {})})
    if cfg.epochs < 0 or cfg.batch_size < 1:
        raise ValueError("epochs must be >= 0 and batch_size positive")
    k = adapter.num_logits
    z = _check_logits("target_zs_logits", target_zs_logits, cols=k)
    y = _check_labels("labels", labels, z.shape[0], adapter.num_classes)
    zv = _check_logits("val_logits", val_logits, cols=k)
    yv = _check_labels("val_labels", val_labels, zv.shape[0], adapter.num_classes)
    cols = _columns(adapter, classes)
    remap = torch.full((adapter.num_classes,), -1, dtype=torch.long)
    remap[cols] = torch.arange(cols.numel())
    y_local = remap[y]
    if (y_local < 0).any():
        raise DataError("refine_adapter: some training labels are not among the chosen classes")
    if (remap[yv] < 0).any():
        raise DataError("refine_adapter: some validation labels are not among the chosen classes")

    model = copy.deepcopy(adapter)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = z.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(max(1, cfg.epochs * steps_per_epoch), cfg.warmup_fraction)
    )
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    show = _show_progress(cfg.progress)

    best_acc = adapter_accuracy(model, zv, yv, classes=cols.tolist())
    best_state = copy.deepcopy(model.state_dict())
    best_epoch = 0
    history: list[dict[str, float]] = [{"epoch": 0, "loss": float("nan"), "val_accuracy": best_acc}]
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        bar = _tqdm(range(steps_per_epoch), total=steps_per_epoch, desc=f"refine {epoch + 1}/{cfg.epochs}", enabled=show)
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            loss = F.cross_entropy(model(z[idx])[:, cols], y_local[idx])
            guarded_step(loss, optimizer, f"refinement, epoch {epoch + 1}", scheduler=scheduler)
            total += loss.item() * len(idx)
        acc = adapter_accuracy(model, zv, yv, classes=cols.tolist())
        history.append({"epoch": epoch + 1, "loss": total / n, "val_accuracy": acc})
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    for row in history:
        row["best"] = float(row["epoch"] == best_epoch)
    return model, history


# -- lambda selection -------------------------------------------------------------------------------
def choose_lambda(
    candidates: Sequence[float],
    source_adapter: TransMiterAdapter,
    source_zs_logits_unlabeled: torch.Tensor,
    target_zs_logits_unlabeled: torch.Tensor,
    val_target_logits: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    classes: Sequence[int] | None = None,
) -> tuple[float, dict[float, float]]:
    """Pick the Procrustes lambda (per image) by the transferred adapter's validation accuracy.

    The validation set is labelled target zero-shot logits; never pass test data. Ties go to
    the larger lambda (the rotation closer to the identity, the more conservative choice).
    Returns ``(best_lambda_per_image, {lambda: validation accuracy})``.
    """
    cands = [float(c) for c in candidates]
    if not cands:
        raise ValueError("choose_lambda needs at least one candidate")
    scores: dict[float, float] = {}
    for lam in cands:
        adapted = transfer_adapter(source_adapter, source_zs_logits_unlabeled, target_zs_logits_unlabeled, lam)
        scores[lam] = adapter_accuracy(adapted, val_target_logits, val_labels, classes=classes)
    best = max(scores, key=lambda lam: (scores[lam], lam))
    return best, scores


__all__ = [
    "ExtractionConfig",
    "RefineConfig",
    "adapter_accuracy",
    "choose_lambda",
    "extract_adapter",
    "kd_loss",
    "refine_adapter",
    "transfer_adapter",
]

"""TransMiter's three steps, and the one choice of the Procrustes lambda.

* :func:`extract_adapter` - unsupervised: distil the fine-tuned weak model's task logits (the
  teacher) into an adapter on the weak model's zero-shot logits. Its only data arguments are
  two logit matrices, so it cannot see a label.
* :func:`apply_adapter` - no backpropagation: align the target model's standardised logits
  to the source's with a regularised orthogonal Procrustes rotation; return a copy of the
  source adapter that applies it, ``f_target(s) = f_source(s Q) Q^T``.
* :func:`refine_adapter` - TransMiter+: cross-entropy on the labelled base classes of the
  target's logits, plus (``distill`` > 0) a pull toward the adapter it starts from on all K
  columns, so what transfer gave the novel classes is kept; learning rate and epoch chosen by
  the selection rule on validation data.
* :func:`select_lambda` - the Procrustes lambda (per image) the selection rule prefers on
  validation data, over :data:`LAMBDA_GRID` unless told otherwise.

Every training loop runs on the shared engine (``vimw.training.engine.run_fit``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from vimw.errors import DataError
from vimw.evaluation.selection import DEFAULT_CRITERION, best_candidate
from vimw.training.config import FitConfig
from vimw.training.engine import RunOutputs, Trainable
from vimw.transfer.adapter import TransMiterAdapter
from vimw.transfer.procrustes import normalised_lambda, orthogonal_alignment
from vimw.transfer.scoring import validation_metrics
from vimw.transfer.standardize import standardize

# Per image (x N images for the regulariser): the reference's 500 on ~1,000 aligned rows is ~0.5.
LAMBDA_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass(frozen=True)
class ExtractionConfig(FitConfig):
    """Settings of :func:`extract_adapter`; the defaults are the reference's (which does not clip)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-3
    warmup_fraction: float = 0.05
    grad_clip: float | None = None
    tau: float = 1.0
    teacher_temperature: float = 0.5
    noise_prob: float = 0.5
    noise_scale: float = 0.5
    hidden_mult: int = 4
    orthogonal_map: str = "cayley"
    progress: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise DataError(f"extraction needs epochs >= 1, batch_size >= 1 and lr > 0, got {self.epochs}, "
                            f"{self.batch_size}, {self.lr}")
        if not self.tau > 0 or not self.teacher_temperature > 0 or not 0 <= self.noise_prob <= 1:
            raise DataError("tau and teacher_temperature must be positive and noise_prob in [0, 1]")


@dataclass(frozen=True)
class RefineConfig(FitConfig):
    """Settings of :func:`refine_adapter` (TransMiter+); ``lrs`` are candidates (``lr`` is unused).

    ``distill``: weight of ``KL(start || refined)`` over all K columns, the start being the
    frozen adapter refinement begins from (0: cross-entropy on the base classes alone, which
    lets the novel classes drift). ``zero_shot``: weight of ``KL(target zero-shot || refined)``
    over the C task columns (PromptSRC's consistency, the term strong fine-tuning has; 0: off).
    No gradient clipping, as in the reference's recipe.
    """

    # Both chosen on development splits (benchmarks/results/transfer-dev.md): the rates' grid
    # moved one step down when its lowest rate won 3 choices in 4; the pull's weight by its HM.
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    epochs: int = 10
    batch_size: int = 32
    weight_decay: float = 1e-3
    warmup_fraction: float = 0.05
    grad_clip: float | None = None
    distill: float = 3.0
    zero_shot: float = 0.0
    progress: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lrs or any(not lr > 0 for lr in self.lrs) or self.epochs < 1 or self.batch_size < 1:
            raise DataError(f"refinement needs positive learning rates, epochs >= 1 and batch_size >= 1, got "
                            f"lrs={self.lrs}, epochs={self.epochs}, batch_size={self.batch_size}")
        for name, what in (("distill", "distillation"), ("zero_shot", "zero-shot pull")):
            weight = getattr(self, name)
            if not (weight >= 0 and math.isfinite(weight)):
                raise DataError(f"the {what} weight must be a finite number >= 0, got {weight}")


# -- checks ---------------------------------------------------------------------------------------------
def _logits(name: str, z: Any, *, cols: int | None = None) -> torch.Tensor:
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


def _labels(name: str, labels: Any, n: int, num_classes: int) -> torch.Tensor:
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.numel() != n:
        raise DataError(f"{name}: {labels.numel()} labels for {n} logit rows")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{name}: labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return labels


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, tau: float = 1.0,
            teacher_temperature: float = 0.5) -> torch.Tensor:
    """``tau^2 T_t KL(softmax(y / (tau T_t)) || softmax(z / tau))``, batch mean."""
    target = F.log_softmax(teacher_logits / (tau * teacher_temperature), dim=-1)
    student = F.log_softmax(student_logits / tau, dim=-1)
    return (tau**2) * teacher_temperature * F.kl_div(student, target, reduction="batchmean", log_target=True)


@torch.no_grad()
def adapter_logits(adapter: TransMiterAdapter, logits: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """The adapter's task logits (N x C) on zero-shot logits (N x K), in eval mode."""
    z = _logits("logits", logits, cols=adapter.num_logits)
    was = adapter.training
    adapter.eval()
    try:
        with parametrize.cached():
            return torch.cat([adapter(z[i : i + batch_size]) for i in range(0, z.shape[0], batch_size)])
    finally:
        adapter.train(was)


@torch.no_grad()
def _start_log_probs(adapter: TransMiterAdapter, z: torch.Tensor) -> torch.Tensor:
    """The frozen adapter's log-probabilities over all K columns (the distillation target)."""
    was = adapter.training
    adapter.eval()
    try:
        return F.log_softmax(adapter(z, return_all=True), -1)
    finally:
        adapter.train(was)


def _adapter_state(adapter: TransMiterAdapter) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in adapter.state_dict().items()}


# -- extraction -------------------------------------------------------------------------------------------
def extract_adapter(
    source_zs_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    config: ExtractionConfig | None = None,
) -> tuple[TransMiterAdapter, dict[str, Any]]:
    """Distil the teacher into a new adapter on the weak model's zero-shot logits, without labels.

    ``source_zs_logits``: N x K (task classes first); ``teacher_logits``: N x C, the fine-tuned
    weak model on the same images (every augmented view is simply more rows). Input noise: with
    probability ``noise_prob`` per batch, ``N(0, (noise_scale * row std)^2)`` on the source
    logits (the teacher stays clean). Trains ``epochs`` epochs and keeps the last (no labels,
    nothing to validate on). Returns ``(adapter, {"history", "seconds"})``.
    """
    from vimw.training.engine import run_fit

    cfg = config or ExtractionConfig()
    z = _logits("source_zs_logits", source_zs_logits)
    y = _logits("teacher_logits", teacher_logits)
    n, k = z.shape
    c = y.shape[1]
    if y.shape[0] != n:
        raise DataError(f"teacher_logits has {y.shape[0]} rows, source_zs_logits has {n}")
    if c > k:
        raise DataError(f"the teacher has C={c} classes, more than the K={k} zero-shot logits")
    adapter = TransMiterAdapter(k, c, hidden_mult=cfg.hidden_mult, seed=cfg.seed, orthogonal_map=cfg.orthogonal_map)
    steps = -(-n // cfg.batch_size)

    def batches(epoch: int):
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        order = torch.randperm(n, generator=gen)
        for i in range(steps):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            zb = z[idx]
            # both draws every step, so the random stream does not depend on the coin
            coin = torch.rand((), generator=gen).item()
            eps = torch.randn(zb.shape, generator=gen)
            if coin < cfg.noise_prob:
                zb = zb + eps * (cfg.noise_scale * zb.std(dim=1, keepdim=True))
            yield zb, y[idx]

    def loss(batch) -> torch.Tensor:
        zb, yb = batch
        return kd_loss(adapter(zb), yb, tau=cfg.tau, teacher_temperature=cfg.teacher_temperature)

    trainable = Trainable([{"params": list(adapter.parameters()), "lr": cfg.lr}], lambda: _adapter_state(adapter),
                          adapter.load_state_dict, adapter.train)
    result = run_fit(trainable, batches, loss, config=cfg, steps_per_epoch=steps,
                     outputs=RunOutputs(progress=cfg.progress, desc="extract"))
    adapter.eval()
    return adapter, {"history": result.history, "seconds": result.seconds, "config": cfg.to_dict()}


# -- apply (transfer) --------------------------------------------------------------------------------------
def apply_adapter(
    source_adapter: TransMiterAdapter,
    source_zs_logits: torch.Tensor,
    target_zs_logits: torch.Tensor,
    lam_per_image: float,
) -> TransMiterAdapter:
    """A copy of ``source_adapter`` for the target model, with no backpropagation.

    Both logit matrices are the two zero-shot models' outputs on the same unlabeled images
    (row for row, same K prompts). Under ``torch.no_grad()``: standardise both, compute ``Q0``
    (``T Q0 ~ S``, pulled to the identity by ``lam_per_image x N``) and return
    ``f_target(s) = f_source(s Q0) Q0^T``. An already transferred adapter composes (``Q0 R``).
    """
    if not isinstance(source_adapter, TransMiterAdapter):
        raise DataError(f"expected a TransMiterAdapter, got {type(source_adapter).__name__}")
    lam = float(lam_per_image)
    if not lam >= 0:
        raise DataError(f"lambda must be >= 0, got {lam_per_image}")
    with torch.no_grad():
        k = source_adapter.num_logits
        s = _logits("source_zs_logits", source_zs_logits, cols=k)
        t = _logits("target_zs_logits", target_zs_logits, cols=k)
        if s.shape[0] != t.shape[0]:
            raise DataError(f"source has {s.shape[0]} rows, target has {t.shape[0]}: they must be the same images")
        q0 = orthogonal_alignment(standardize(s)[0], standardize(t)[0], normalised_lambda(lam, s.shape[0]))
        if source_adapter.rotation is not None:
            q0 = q0 @ source_adapter.rotation.to(torch.float64)
        target = copy.deepcopy(source_adapter)
        target.set_rotation(q0)
        target.eval()
        return target


def select_lambda(
    source_adapter: TransMiterAdapter,
    source_zs_logits: torch.Tensor,
    target_zs_logits: torch.Tensor,
    val_logits: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    base: Sequence[int],
    novel: Sequence[int],
    protocol: str = "all",
    grid: Sequence[float] = LAMBDA_GRID,
    criterion: str = DEFAULT_CRITERION,
) -> tuple[float, list[dict[str, float]]]:
    """The lambda per image whose transferred adapter the selection rule prefers on labelled
    *validation* target logits (never test data). Returns ``(lambda, [metrics per candidate])``.
    Candidates are tried in the order given; a full tie keeps the earlier one."""
    values = [float(v) for v in grid]
    if not values:
        raise DataError("the lambda grid is empty")
    if any(not v >= 0 for v in values):
        raise DataError(f"lambdas must be >= 0, got {values}")
    zv = _logits("val_logits", val_logits, cols=source_adapter.num_logits)
    candidates = []
    for lam in values:
        moved = apply_adapter(source_adapter, source_zs_logits, target_zs_logits, lam)
        metrics = validation_metrics(adapter_logits(moved, zv), val_labels, base, novel, protocol)
        candidates.append({"lambda": lam, **metrics})
    return candidates[best_candidate(candidates, criterion)]["lambda"], candidates


# -- refinement (TransMiter+) -------------------------------------------------------------------------------
def refine_adapter(
    adapter: TransMiterAdapter,
    train_logits: torch.Tensor,
    train_labels: torch.Tensor,
    val_logits: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    base: Sequence[int],
    novel: Sequence[int],
    protocol: str = "all",
    config: RefineConfig | None = None,
    criterion: str = DEFAULT_CRITERION,
    distill_logits: torch.Tensor | None = None,
) -> tuple[TransMiterAdapter, dict[str, Any]]:
    """TransMiter+: fine-tune a (transferred) adapter on a few labelled target examples.

    Cross-entropy over the base columns (every training label must be a base class), plus
    ``config.distill`` x ``KL(p_start || p_refined)`` over all K columns on ``distill_logits``
    (unlabeled rows of the target model, e.g. the alignment rows; default: the training rows),
    ``p_start`` being the input adapter, frozen. All adapter parameters train (the transfer
    rotation is a fixed buffer). For each learning rate the adapter restarts from the input; the
    epoch and the rate are chosen by the selection rule on validation logits under ``protocol``,
    the unrefined adapter (epoch 0) being a candidate. Returns a new adapter (the input is
    untouched) and ``{"lr", "epoch", "candidates", ...}``.
    """
    from vimw.training.engine import run_fit

    cfg = config or RefineConfig()
    k, c = adapter.num_logits, adapter.num_classes
    z = _logits("train_logits", train_logits, cols=k)
    y = _labels("train_labels", train_labels, z.shape[0], c)
    zv = _logits("val_logits", val_logits, cols=k)
    yv = _labels("val_labels", val_labels, zv.shape[0], c)
    zd = z if distill_logits is None else _logits("distill_logits", distill_logits, cols=k)
    start = _start_log_probs(adapter, zd) if cfg.distill > 0 else None
    zero_shot = F.log_softmax(zd[:, :c], -1) if cfg.zero_shot > 0 else None
    base_t = torch.as_tensor(list(base), dtype=torch.long)
    if not torch.isin(y, base_t).all():
        raise DataError("refine_adapter: every training label must be a base class")
    remap = torch.full((c,), -1, dtype=torch.long)
    remap[base_t] = torch.arange(base_t.numel())
    y_local = remap[y]
    n, nd = z.shape[0], zd.shape[0]
    steps = -(-n // cfg.batch_size)
    runs = []
    for lr in cfg.lrs:
        model = copy.deepcopy(adapter)

        def batches(epoch: int, _lr=lr):
            gen = torch.Generator().manual_seed(cfg.seed * 104729 + epoch)
            order, distill_order = torch.randperm(n, generator=gen), torch.randperm(nd, generator=gen)
            for i in range(steps):
                # the distillation rows cycle at the training batch's size
                j = torch.arange(i * cfg.batch_size, (i + 1) * cfg.batch_size) % nd
                yield order[i * cfg.batch_size : (i + 1) * cfg.batch_size], distill_order[j]

        def loss(batch, _m=model) -> torch.Tensor:
            idx, jdx = batch
            if start is None and zero_shot is None:
                return F.cross_entropy(_m(z[idx])[:, base_t], y_local[idx])
            # one forward for both parts (the map is row-wise), so W is materialised once a step
            out = _m(torch.cat([z[idx], zd[jdx]]), return_all=True)
            total = F.cross_entropy(out[: len(idx), base_t], y_local[idx])
            pulled = out[len(idx) :]
            if start is not None:
                total = total + cfg.distill * F.kl_div(F.log_softmax(pulled, -1), start[jdx],
                                                       reduction="batchmean", log_target=True)
            if zero_shot is not None:
                total = total + cfg.zero_shot * F.kl_div(F.log_softmax(pulled[:, :c], -1), zero_shot[jdx],
                                                         reduction="batchmean", log_target=True)
            return total

        def validate(_m=model) -> dict[str, float]:
            return validation_metrics(adapter_logits(_m, zv), yv, base, novel, protocol)

        trainable = Trainable([{"params": list(model.parameters()), "lr": float(lr)}],
                              lambda _m=model: _adapter_state(_m), model.load_state_dict, model.train)
        result = run_fit(trainable, batches, loss, config=cfg.replace(lr=float(lr)), steps_per_epoch=steps,
                         validate=validate, include_start=True, criterion=criterion,
                         outputs=RunOutputs(progress=cfg.progress, desc=f"refine lr {lr:g}"))
        model.eval()
        runs.append((model, {"lr": float(lr), "epoch": result.best_epoch, **result.best_metrics,
                             "history": result.history, "seconds": result.seconds}))
    best = best_candidate([r[1] for r in runs], criterion)
    model, chosen = runs[best]
    info = {"lr": chosen["lr"], "epoch": chosen["epoch"], "score": chosen.get("score"),
            "candidates": [{k: v for k, v in r[1].items() if k != "history"} for r in runs],
            "seconds": sum(r[1]["seconds"] for r in runs), "config": cfg.to_dict()}
    return model, info


__all__ = [
    "ExtractionConfig",
    "LAMBDA_GRID",
    "RefineConfig",
    "adapter_logits",
    "apply_adapter",
    "extract_adapter",
    "kd_loss",
    "refine_adapter",
    "select_lambda",
]

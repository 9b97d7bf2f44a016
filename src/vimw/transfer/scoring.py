"""Scoring in the base-to-novel protocol, and every logit combination that is scored.

* :func:`base_novel_scores` - one logit vector over all C classes per image: base images are
  scored by argmax over the base columns only, novel images over the novel columns only;
  base, novel and their harmonic mean (HM).
* :func:`validation_metrics` - the metrics a *choice* is made on, for the selection rule
  (``vimw.evaluation.selection``): ``{"score", "loss", ...}`` under a validation protocol:
  ``"all"`` (base and novel validation images: score = HM) or ``"base"`` (base-class images
  only, novel labels never seen: score = base accuracy).
* :func:`blend_logits` - TransMiter's test-time blend (reference ``src/eval.py``):
  ``alpha * log_softmax(adapter) + (1 - alpha) * log_softmax(target zero-shot)``; alpha = 1
  is the adapter alone.
* :func:`proxy_logits`, :func:`ensemble_logits` - the logit-arithmetic baselines of the
  reference code, in log-probability space.
* :func:`select_alpha` - the blending weight of any of the three, chosen on validation data by
  the one selection rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from vimw.errors import DataError
from vimw.evaluation.selection import DEFAULT_CRITERION, best_candidate

ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))
VALIDATION_PROTOCOLS = ("all", "base")


def json_safe(value):
    """``value`` with every NaN or infinite float replaced by ``None`` (JSON has no NaN); a
    split that is not scored (novel under the base-class protocol) is NaN in memory."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b <= 0 else 2.0 * a * b / (a + b)


def _columns(classes: Sequence[int], name: str) -> torch.Tensor:
    cols = torch.as_tensor(list(classes), dtype=torch.long)
    if cols.numel() == 0:
        raise DataError(f"no {name} classes given")
    return cols


def base_novel_scores(
    logits: torch.Tensor, labels: torch.Tensor, base: Sequence[int], novel: Sequence[int]
) -> dict[str, float]:
    """Base-to-novel accuracies from one logit vector over all C classes per image.

    Images whose label is a base class are scored by argmax over the ``base`` columns only,
    novel images over the ``novel`` columns only. Returns ``{"base", "novel", "hm"}`` (a split
    with no images scores NaN and the HM is then NaN too).
    """
    logits = torch.as_tensor(logits).float()
    labels = torch.as_tensor(labels).long().reshape(-1)
    if logits.dim() != 2 or logits.shape[0] != labels.numel():
        raise DataError(f"logits {tuple(logits.shape)} do not match {labels.numel()} labels")
    base_t, novel_t = _columns(base, "base"), _columns(novel, "novel")
    if set(base_t.tolist()) & set(novel_t.tolist()):
        raise DataError("base and novel classes overlap")
    if max(base_t.max().item(), novel_t.max().item()) >= logits.shape[1]:
        raise DataError(f"class columns out of range for {logits.shape[1]} logits")
    out: dict[str, float] = {}
    for key, cols in (("base", base_t), ("novel", novel_t)):
        mask = torch.isin(labels, cols)
        if not mask.any():
            out[key] = float("nan")
            continue
        pred = cols[logits[mask][:, cols].argmax(dim=1)]
        out[key] = float((pred == labels[mask]).float().mean())
    out["hm"] = (harmonic_mean(out["base"], out["novel"])
                 if not any(math.isnan(v) for v in out.values()) else float("nan"))
    return out


def _split_loss(logits: torch.Tensor, labels: torch.Tensor, cols: torch.Tensor) -> tuple[float, int]:
    mask = torch.isin(labels, cols)
    if not mask.any():
        return 0.0, 0
    remap = torch.full((int(max(cols.max().item(), labels.max().item())) + 1,), -1, dtype=torch.long)
    remap[cols] = torch.arange(cols.numel())
    loss = F.cross_entropy(logits[mask][:, cols], remap[labels[mask]], reduction="sum")
    return float(loss), int(mask.sum())


def validation_metrics(
    logits: torch.Tensor, labels: torch.Tensor, base: Sequence[int], novel: Sequence[int], protocol: str = "all"
) -> dict[str, float]:
    """Metrics for the selection rule: ``score`` (higher is better) and ``loss`` (tie-break).

    ``protocol="all"``: score = HM over base and novel validation images, loss = the mean
    cross-entropy over each image's own split columns. ``protocol="base"``: only base-class
    images count (novel-class images and labels are ignored): score = base accuracy, loss =
    cross-entropy over the base columns. ``base``, ``novel`` and ``hm`` are reported too.
    """
    if protocol not in VALIDATION_PROTOCOLS:
        raise DataError(f"validation protocol must be one of {VALIDATION_PROTOCOLS}, got {protocol!r}")
    logits = torch.as_tensor(logits).float()
    labels = torch.as_tensor(labels).long().reshape(-1)
    base_t, novel_t = _columns(base, "base"), _columns(novel, "novel")
    if protocol == "base":
        keep = torch.isin(labels, base_t)
        if not keep.any():
            raise DataError("the base-class validation protocol needs base-class validation images")
        logits, labels = logits[keep], labels[keep]
    scores = base_novel_scores(logits, labels, base, novel)
    with torch.no_grad():
        total, count = 0.0, 0
        for cols in (base_t, novel_t):
            loss, n = _split_loss(logits, labels, cols)
            total, count = total + loss, count + n
    score = scores["base"] if protocol == "base" else scores["hm"]
    return {"score": score, "loss": total / max(count, 1), **scores}


# -- logit combinations -----------------------------------------------------------------------------
def blend_logits(adapter_logits: torch.Tensor, target_zs_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha log_softmax(adapter) + (1 - alpha) log_softmax(zero-shot)`` over the task columns.

    ``alpha = 1`` returns ``log_softmax(adapter)``: the same argmax, on any subset of columns,
    as the adapter's own logits.
    """
    a = float(alpha)
    if not 0.0 <= a <= 1.0:
        raise DataError(f"alpha must be in [0, 1], got {alpha}")
    adapted = F.log_softmax(adapter_logits.float(), -1)
    if a == 1.0:
        return adapted
    return a * adapted + (1.0 - a) * F.log_softmax(target_zs_logits.float(), -1)


def proxy_logits(strong_zs: torch.Tensor, weak_ft: torch.Tensor, weak_zs: torch.Tensor, alpha: float) -> torch.Tensor:
    """``log p_T^zs + a (log p_S^ft - log p_S^zs)`` over the task columns (reference baseline)."""
    return F.log_softmax(strong_zs.float(), -1) + alpha * (
        F.log_softmax(weak_ft.float(), -1) - F.log_softmax(weak_zs.float(), -1))


def ensemble_logits(weak_ft: torch.Tensor, strong_zs: torch.Tensor, alpha: float) -> torch.Tensor:
    """``a log p_S^ft + (1 - a) log p_T^zs`` over the task columns (reference baseline)."""
    return alpha * F.log_softmax(weak_ft.float(), -1) + (1.0 - alpha) * F.log_softmax(strong_zs.float(), -1)


def select_alpha(
    make_logits: Callable[[float], torch.Tensor],
    val_labels: torch.Tensor,
    base: Sequence[int],
    novel: Sequence[int],
    *,
    protocol: str = "all",
    grid: Sequence[float] = ALPHA_GRID,
    criterion: str = DEFAULT_CRITERION,
) -> tuple[float, list[dict[str, float]]]:
    """The ``alpha`` of ``grid`` that the selection rule prefers on validation logits.

    ``make_logits(alpha)`` returns the validation logits for one alpha. Returns
    ``(alpha, [metrics per candidate, with "alpha"])``; never give it test data.
    """
    if not grid:
        raise DataError("the alpha grid is empty")
    candidates = [{"alpha": float(a), **validation_metrics(make_logits(float(a)), val_labels, base, novel, protocol)}
                  for a in grid]
    best = best_candidate(candidates, criterion)
    return candidates[best]["alpha"], candidates


__all__ = [
    "ALPHA_GRID",
    "VALIDATION_PROTOCOLS",
    "base_novel_scores",
    "blend_logits",
    "ensemble_logits",
    "harmonic_mean",
    "json_safe",
    "proxy_logits",
    "select_alpha",
    "validation_metrics",
]

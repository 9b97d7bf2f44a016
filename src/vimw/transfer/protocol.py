"""The base-to-novel protocol (SPEC 2.6) and the fine-tuned weak model that TransMiter extracts.

* :class:`FineTunedZeroShot` - a zero-shot head whose *image features* are adapted by a plug-in
  (a new convpass module or a ViM aggregation over a zoo) while the text-derived classifier rows
  for all the task's classes stay frozen buffers; only the plug-in trains.
* :func:`finetune_zero_shot` - cross-entropy on the base classes over the base columns, AdamW,
  learning rate and epoch chosen on base-class validation images.
* :func:`base_novel_scores` - one logit vector over all C classes: base images scored by argmax
  over the base columns, novel images over the novel columns; base, novel, harmonic mean.
* :func:`proxy_logits`, :func:`ensemble_logits`, :func:`choose_alpha` - the logit-arithmetic
  baselines of the reference code, in log-probability space.
* :func:`cached_logits` / :func:`cached_features` - one pass of a model over an image set,
  stored in a :class:`~vimw.transfer.cache.LogitCache` and reused by every method.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vimw.errors import DataError, TrainingError, VimwError
from vimw.modules.registry import DEFAULT_MODULE_KIND
from vimw.training.step import guarded_step
from vimw.transfer.cache import LogitCache
from vimw.transfer.vocab import DEFAULT_TEMPLATE

ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))


# -- scoring ------------------------------------------------------------------------------------
def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b <= 0 else 2.0 * a * b / (a + b)


def base_novel_scores(
    logits: torch.Tensor, labels: torch.Tensor, base: Sequence[int], novel: Sequence[int]
) -> dict[str, float]:
    """Base-to-novel accuracies from one logit vector over all C classes per image (SPEC 2.6).

    Images whose label is a base class are scored by argmax over the ``base`` columns only,
    novel images over the ``novel`` columns only. Returns ``{"base", "novel", "hm"}`` (a split
    with no images scores NaN and the HM is then NaN too).
    """
    logits = torch.as_tensor(logits).float()
    labels = torch.as_tensor(labels).long().reshape(-1)
    if logits.dim() != 2 or logits.shape[0] != labels.numel():
        raise DataError(f"logits {tuple(logits.shape)} do not match {labels.numel()} labels")
    base_t = torch.as_tensor(list(base), dtype=torch.long)
    novel_t = torch.as_tensor(list(novel), dtype=torch.long)
    if set(base_t.tolist()) & set(novel_t.tolist()):
        raise DataError("base and novel classes overlap")
    out: dict[str, float] = {}
    for key, cols in (("base", base_t), ("novel", novel_t)):
        mask = torch.isin(labels, cols)
        if not mask.any():
            out[key] = float("nan")
            continue
        pred = cols[logits[mask][:, cols].argmax(dim=1)]
        out[key] = float((pred == labels[mask]).float().mean())
    out["hm"] = harmonic_mean(out["base"], out["novel"]) if not any(math.isnan(v) for v in out.values()) else float("nan")
    return out


def proxy_logits(strong_zs: torch.Tensor, weak_ft: torch.Tensor, weak_zs: torch.Tensor, alpha: float) -> torch.Tensor:
    """``log p_T^zs + a (log p_S^ft - log p_S^zs)`` over the task columns (reference baseline)."""
    return F.log_softmax(strong_zs.float(), -1) + alpha * (F.log_softmax(weak_ft.float(), -1) - F.log_softmax(weak_zs.float(), -1))


def ensemble_logits(weak_ft: torch.Tensor, strong_zs: torch.Tensor, alpha: float) -> torch.Tensor:
    """``a log p_S^ft + (1 - a) log p_T^zs`` over the task columns (reference baseline)."""
    return alpha * F.log_softmax(weak_ft.float(), -1) + (1.0 - alpha) * F.log_softmax(strong_zs.float(), -1)


def choose_alpha(
    make_logits: Callable[[float], torch.Tensor],
    val_labels: torch.Tensor,
    base: Sequence[int],
    novel: Sequence[int],
    grid: Sequence[float] = ALPHA_GRID,
) -> tuple[float, dict[float, float]]:
    """The ``alpha`` of ``grid`` with the best validation HM (ties: the smaller alpha)."""
    scores = {float(a): base_novel_scores(make_logits(float(a)), val_labels, base, novel)["hm"] for a in grid}
    best = max(scores, key=lambda a: (scores[a], -a))
    return best, scores


# -- the fine-tuned zero-shot model -----------------------------------------------------------------
class FineTunedZeroShot(nn.Module):
    """``logits = (backbone(x; bypass=plugin) - mean) @ rows^T + bias`` with frozen text rows.

    Built from an :class:`~vimw.transfer.zeroshot.ImageNetTextHead` (its backbone, inversion,
    calibration mean and the rows it predicts for ``class_names``) and a plug-in exposing
    ``.bypass`` (a :class:`~vimw.modules.ModuleSet` or a :class:`~vimw.aggregation.ZooAggregate`).
    The rows, bias and mean are buffers; the backbone is frozen; only the plug-in trains.
    """

    def __init__(self, head: Any, class_names: Sequence[str], plugin: nn.Module, template: str = DEFAULT_TEMPLATE) -> None:
        super().__init__()
        if not hasattr(plugin, "bypass"):
            raise VimwError("the plug-in must expose .bypass (a ModuleSet or a ZooAggregate)")
        self.backbone = head.backbone
        self.backbone.freeze()
        self.plugin = plugin
        self.invert = bool(getattr(head, "invert", False))
        self.class_names = [str(n) for n in class_names]
        self.template = template
        self.head_name = head.name
        weights, bias = head.class_weights(self.class_names, template)
        mean = getattr(head, "feature_mean", None)
        self.register_buffer("rows", weights.T.contiguous().float())
        self.register_buffer("bias", bias.float().clone())
        self.register_buffer("feature_mean", torch.zeros(weights.shape[0]) if mean is None else mean.float().clone())

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8 and self.invert:
            images = 255 - images
        elif self.invert:
            images = 1.0 - images
        pixels = self.backbone.preprocess(images.to(self.device))
        return self.backbone.forward_features(pixels, bypass=self.plugin.bypass)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.features(images) - self.feature_mean) @ self.rows.T + self.bias

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.plugin.parameters() if p.requires_grad]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, *, batch_size: int = 128) -> torch.Tensor:
        was = self.training
        self.eval()
        try:
            return torch.cat([self(images[i : i + batch_size]).float().cpu() for i in range(0, len(images), batch_size)])
        finally:
            self.train(was)


def make_plugin(backbone: Any, plugin: str | Path = DEFAULT_MODULE_KIND, *, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh plug-in: a module kind (default ``DEFAULT_MODULE_KIND``) or a zoo directory (ViM ``ens``)."""
    from vimw.modules import ModuleSet, config_from_dict

    torch.manual_seed(seed)
    text = str(plugin)
    if Path(text).is_dir():
        from vimw.aggregation.aggregate import ZooAggregate
        from vimw.zoo import Zoo

        zoo = Zoo(text)
        names = [n for n, e in zoo.list() if e.get("fingerprint") == backbone.fingerprint()]
        if not names:
            raise VimwError(f"the zoo {text} has no module for {backbone.arch} at this resolution")
        experts = [zoo.load(n, backbone) for n in names]
        return ZooAggregate(experts, names, backbone, mode="ens"), {"plugin": "zoo-ens", "zoo": str(Path(text).resolve()), "modules": names}
    module = ModuleSet.create(config_from_dict({"kind": text}), backbone.sites)
    return module, {"plugin": text, "module": module.config.to_dict()}


def finetune_zero_shot(
    model: FineTunedZeroShot,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    classes: Sequence[int],
    lrs: Sequence[float] = (1e-3, 3e-3),
    epochs: int = 10,
    batch_size: int = 16,
    weight_decay: float = 1e-4,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[FineTunedZeroShot, dict[str, Any]]:
    """Cross-entropy over the ``classes`` columns (the base classes); only the plug-in trains.

    For each learning rate in ``lrs`` the plug-in restarts from its initial weights and trains
    ``epochs`` epochs (AdamW, cosine); after every epoch the validation accuracy over the same
    columns is measured. The returned model (a copy) holds the best (lr, epoch) - epoch 0, the
    untouched plug-in, is a candidate too. Labels index the model's class columns.
    """
    cols = torch.as_tensor(list(classes), dtype=torch.long)
    remap = torch.full((len(model.class_names),), -1, dtype=torch.long)
    remap[cols] = torch.arange(cols.numel())
    y, yv = remap[torch.as_tensor(train_labels).long()], remap[torch.as_tensor(val_labels).long()]
    if (y < 0).any() or (yv < 0).any():
        raise DataError("finetune_zero_shot: every training and validation label must be one of the chosen classes")
    cols_dev = cols.to(model.device)

    def val_acc(m: FineTunedZeroShot) -> float:
        out = m.predict(val_images)[:, cols]
        return float((out.argmax(1) == yv).float().mean())

    initial = copy.deepcopy(model.plugin.state_dict())
    best = (val_acc(model), 0.0, 0)
    best_state = copy.deepcopy(initial)
    history: list[dict[str, float]] = [{"lr": 0.0, "epoch": 0, "val_accuracy": best[0]}]
    started = time.perf_counter()
    n = len(train_images)
    for lr in lrs:
        model.plugin.load_state_dict(initial)
        params = model.trainable_parameters()
        if not params:
            raise TrainingError("the plug-in has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        steps = epochs * math.ceil(n / batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
        gen = torch.Generator().manual_seed(seed + 11)
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                logits = model(train_images[idx])[:, cols_dev]
                loss = F.cross_entropy(logits, y[idx].to(model.device))
                guarded_step(loss, optimizer, f"fine-tuning (lr {lr}, epoch {epoch})", scheduler=scheduler)
                total += loss.item() * len(idx)
            acc = val_acc(model)
            history.append({"lr": lr, "epoch": epoch, "loss": total / n, "val_accuracy": acc})
            if log:
                log(f"    lr {lr:g} epoch {epoch}: loss {total / n:.4f}, val {acc:.4f}")
            if acc > best[0]:
                best = (acc, lr, epoch)
                best_state = copy.deepcopy(model.plugin.state_dict())
    model.plugin.load_state_dict(best_state)
    model.eval()
    info = {"best_val_accuracy": best[0], "best_lr": best[1], "best_epoch": best[2], "history": history,
            "seconds": time.perf_counter() - started, "trainable": sum(p.numel() for p in model.trainable_parameters())}
    return model, info


# -- cached passes ---------------------------------------------------------------------------------
_FEATURES: dict[tuple[str, str], torch.Tensor] = {}


def cached_features(head: Any, image_set_id: str, images: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """Image features of ``head`` on an image set, memoised in this process (not on disk)."""
    key = (head.name.split("+cal")[0], image_set_id)
    if key not in _FEATURES:
        _FEATURES[key] = head.encode_images(images, batch_size=batch_size, progress=False)
    return _FEATURES[key]


def cached_calibration(head: Any, cache: LogitCache, image_set_id: str, images: torch.Tensor) -> None:
    """Calibrate an :class:`ImageNetTextHead` on unlabeled images, the mean stored in ``cache``."""
    if not hasattr(head, "calibrate"):
        return
    head.set_feature_mean(None)
    mean = cache.get_or_compute(
        head.name, image_set_id, ["feature-mean"], "calibration",
        lambda: cached_features(head, image_set_id, images).mean(0).reshape(-1, 1), num_images=head.feature_dim,
    )
    head.set_feature_mean(mean.reshape(-1))


def cached_logits(
    head: Any,
    cache: LogitCache,
    image_set_id: str,
    images: torch.Tensor,
    class_names: Sequence[str],
    template: str = DEFAULT_TEMPLATE,
    *,
    aux_words_sha256: str | None = None,
) -> torch.Tensor:
    """Zero-shot logits (N x K) of ``head`` on an image set: from the cache, or one pass."""

    def compute() -> torch.Tensor:
        weights, bias = head.class_weights(class_names, template)
        return head.logits(cached_features(head, image_set_id, images), weights, bias)

    return cache.get_or_compute(head.name, image_set_id, class_names, template, compute,
                                aux_words_sha256=aux_words_sha256, num_images=len(images))


__all__ = [
    "ALPHA_GRID",
    "FineTunedZeroShot",
    "base_novel_scores",
    "cached_calibration",
    "cached_features",
    "cached_logits",
    "choose_alpha",
    "ensemble_logits",
    "finetune_zero_shot",
    "harmonic_mean",
    "make_plugin",
    "proxy_logits",
]

"""Methods whose head is fitted in closed form: no gradient step, no training seed, no validation image.

- ``ridge_probe``: a ridge head on the frozen backbone's features;
- ``zoo_ridge``: the uniform ensemble of the zoo amplified ``ZOO_RIDGE_SCALE`` times at every
  site, frozen, with the same ridge head. Softmax gates divide each module's effect by N
  (the zoo's size); the fixed amplification gives it back (``benchmarks/results/dev/NOTES.md``).

The head (``aggregation.closedform.fit_ridge_head``) chooses its ridge strength and
temperature by the exact leave-one-out loss of the training images, or takes fixed defaults
when a class has one image. Features of a context's images are computed once and shared by
every fit on them (cross-validation folds refit the head on subsets of the same rows).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import torch

from vimw.aggregation.closedform import fit_ridge_head, set_linear_head
from vimw.aggregation.gatefit import ScaledZooAggregate
from vimw.methods.base import DownstreamMethod, MethodContext, register_method
from vimw.training import FitResult, TaskModel, TrainConfig
from vimw.training.headfit import frozen_features

# Nothing to search: the head chooses its own ridge strength and temperature by leave-one-out.
CLOSED_FORM_GRID: tuple[dict, ...] = ({},)
# The per-site amplification of the uniform zoo ensemble, fixed on the development tasks
# (fmnist-apparel and photos, ridge probe: x2 +1.2 / +1.1 / +0.6 / +0.3 points over the backbone at
# 1 / 2 / 5 / 10 shots, mean of the two tasks; x1 -0.3 / +0.7 / +0.5 / +0.6; x4 -0.4 / -0.8 / -0.8 / -0.6;
# benchmarks/results/dev/frozen_probe-devtasks.md).
ZOO_RIDGE_SCALE = 2.0


class ClosedFormHead(DownstreamMethod):
    """A frozen model below a linear head that is fitted in closed form on the training images."""

    closed_form: ClassVar[bool] = True

    def features(self, model: TaskModel, ctx: MethodContext, images: torch.Tensor) -> torch.Tensor:
        """Frozen features of ``images`` (un-augmented: leave-one-out needs each image once), cached in ``ctx``."""
        key = ("closed_form_features", self.name, images.data_ptr(), tuple(images.shape))
        if key not in ctx.cache:
            ctx.cache[key] = (images, frozen_features(model, images))  # the tensor is held so its key stays valid
        return ctx.cache[key][1]

    def fit(self, model: TaskModel, ctx: MethodContext, config: TrainConfig, progress: bool | None) -> FitResult:
        started = time.perf_counter()
        train = ctx.data.train
        fitted = fit_ridge_head(self.features(model, ctx, train.images), train.targets.to(ctx.device()),
                                ctx.data.num_classes)
        set_linear_head(model.head.fc, fitted)
        ctx.cache[("closed_form_head", self.name)] = fitted.to_dict()
        metrics = {"loo_accuracy": fitted.loo_accuracy, "loo_log_loss": fitted.loo_log_loss}
        return FitResult(best_score=math.nan, best_epoch=0, history=[], best_state={},
                         seconds=time.perf_counter() - started, images_seen=len(train),
                         best_metrics={k: v for k, v in metrics.items() if v is not None})

    def held_out_logits(self, ctx: MethodContext, config_for: Callable[[int], TrainConfig],
                        folds: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[torch.Tensor]:
        """The head refitted on each fold's rows of features computed once for every labelled image."""
        model, _ = self.build_seeded(ctx, config_for(len(ctx.data.train)))
        labelled = ctx.data.train
        features = self.features(model, ctx, labelled.images)
        targets = labelled.targets.to(features.device)
        out = []
        for kept, held in folds:
            kept, held = torch.as_tensor(kept), torch.as_tensor(held)
            fitted = fit_ridge_head(features[kept], targets[kept], ctx.data.num_classes)
            out.append(fitted.logits(features[held]).float().cpu())
        return out

    def train(self, ctx: MethodContext, config: TrainConfig, *, progress: bool | None = False):
        result = super().train(ctx, config, progress=progress)
        result.info = {**result.info, "head_training": "closed form",
                       "head": ctx.cache[("closed_form_head", self.name)]}
        return result


@register_method("ridge_probe", "a ridge head in closed form on the frozen backbone's features (no training seed)",
                 grid=CLOSED_FORM_GRID, auto_rank=0, trains="head")
class RidgeProbe(ClosedFormHead):
    def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
        return TaskModel(ctx.backbone, ctx.head()), {}


@register_method("zoo_ridge", f"the uniform zoo ensemble amplified x{ZOO_RIDGE_SCALE:g} at every site, frozen, "
                              "with a ridge head in closed form", grid=CLOSED_FORM_GRID, uses_zoo=True, auto_rank=2,
                 trains="head")
class ZooRidge(ClosedFormHead):
    scale: ClassVar[float] = ZOO_RIDGE_SCALE

    def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
        plugin, record = amplified_zoo(ctx, self.name, self.scale)
        return TaskModel(ctx.backbone, ctx.head(), plugin=plugin), record


def amplified_zoo(ctx: MethodContext, method: str, scale: float) -> tuple[ScaledZooAggregate, dict]:
    """The uniform ensemble of the context's zoo modules times ``scale`` at every site, frozen, and its
    record (the manifest's ``zoo`` and ``aggregation``). Loading the modules builds each one before its
    weights arrive, which draws from the random generator."""
    names, experts = ctx.experts(method)
    plugin = ScaledZooAggregate(experts, names, ctx.backbone, mode="ens")
    plugin.gate_logits.requires_grad_(False)  # uniform gates, fixed
    with torch.no_grad():
        plugin.log_scale.fill_(math.log(scale))
    return plugin, {
        "zoo": ctx.zoo_record(names),
        "aggregation": {"mode": "ens", "top_k": ctx.top_k, "single_index": None, "site_scale": True,
                        "fixed": f"uniform gates x {scale:g}"},
    }

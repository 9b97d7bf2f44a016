"""ViM's aggregation modes: per-site softmax gates over the frozen zoo (Feng et al. 2023), plus ``single``.

``ens`` (the paper's; every module runs, gates learned), ``topk`` (the ``top_k`` largest gates
run), ``uniform`` (gates fixed equal), ``merge`` (gate-weighted parameter average, one module's
cost) and ``single`` (the best module on validation, one-hot gates). Only the gates (where they
learn) and the head train.
"""

from __future__ import annotations

import time
from typing import ClassVar

from vimw.aggregation.aggregate import ZooAggregate
from vimw.evaluation.selection import best_candidate
from vimw.methods.base import (
    GATED_GRID,
    HEAD_ONLY_GRID,
    DownstreamMethod,
    DownstreamResult,
    MethodContext,
    finish,
    register_method,
)
from vimw.training import TaskModel, TrainConfig


class ZooGates(DownstreamMethod):
    """A ViM aggregation mode: ``ZooAggregate(mode=name)`` over the zoo's modules and a head."""

    uses_zoo: ClassVar[bool] = True
    grid: ClassVar[tuple[dict, ...]] = GATED_GRID

    def build(self, ctx: MethodContext, config: TrainConfig, single_index: int | None = None
              ) -> tuple[TaskModel, dict]:
        names, experts = ctx.experts(self.name)
        plugin = ZooAggregate(experts, names, ctx.backbone, mode=self.name, top_k=ctx.top_k, single_index=single_index)
        return TaskModel(ctx.backbone, ctx.head(), plugin=plugin), {
            "zoo": ctx.zoo_record(names),
            "aggregation": {"mode": self.name, "top_k": ctx.top_k, "single_index": single_index},
        }


@register_method
class Ens(ZooGates):
    name: ClassVar[str] = "ens"
    summary: ClassVar[str] = "ViM's Ens-MoE: every zoo module runs, per-site softmax gates learned with the head"
    auto_rank: ClassVar[int | None] = 5


@register_method
class TopK(ZooGates):
    name: ClassVar[str] = "topk"
    summary: ClassVar[str] = "learned gates, only the top-k modules of each site run"


@register_method
class Uniform(ZooGates):
    name: ClassVar[str] = "uniform"
    summary: ClassVar[str] = "gates fixed equal over the zoo; only the head trains"
    auto_rank: ClassVar[int | None] = 2
    grid: ClassVar[tuple[dict, ...]] = HEAD_ONLY_GRID


@register_method
class Merge(ZooGates):
    name: ClassVar[str] = "merge"
    summary: ClassVar[str] = "learned gates over the modules' parameters: one module's inference cost"


@register_method
class Single(ZooGates):
    name: ClassVar[str] = "single"
    summary: ClassVar[str] = "the one zoo module whose head scores best on validation"
    grid: ClassVar[tuple[dict, ...]] = ({"lr": 3e-3},)  # one head per zoo module: one setting

    def build(self, ctx: MethodContext, config: TrainConfig, single_index: int | None = 0
              ) -> tuple[TaskModel, dict]:
        return super().build(ctx, config, single_index=single_index)

    def train(self, ctx: MethodContext, config: TrainConfig, *, progress: bool | None = False) -> DownstreamResult:
        """Every zoo module with its own head; the best on validation is kept as it was trained."""
        started = time.perf_counter()
        names = ctx.zoo_names(self.name)
        runs = []
        for index in range(len(names)):
            model, info = self.build_seeded(ctx, config, single_index=index)
            runs.append((model, info, self.fit(model, ctx, config, progress)))
        model, info, result = runs[best_candidate([r[2].best_metrics for r in runs])]
        chosen = names[info["aggregation"]["single_index"]]
        info = {**info, "head_training": "cached features",
                "single_val_scores": dict(zip(names, [r[2].best_score for r in runs])), "chosen": chosen}
        return finish(self.name, model, info, result, ctx, config, started)

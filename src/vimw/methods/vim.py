"""ViM's aggregation modes: per-site softmax gates over the frozen zoo (Feng et al. 2023), plus ``single``.

``ens`` (the paper's; every module runs, gates learned), ``topk`` (the ``top_k`` largest gates
run), ``uniform`` (gates fixed equal), ``merge`` (gate-weighted parameter average, one module's
cost) and ``single`` (the best module on validation, one-hot gates). Only the gates (where they
learn) and the head train.
"""

from __future__ import annotations

import time
from vimw.aggregation.aggregate import ZooAggregate
from vimw.errors import VimwError
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

    def build(self, ctx: MethodContext, config: TrainConfig, single_index: int | None = None
              ) -> tuple[TaskModel, dict]:
        names, experts = ctx.experts(self.name)
        plugin = ZooAggregate(experts, names, ctx.backbone, mode=self.name, top_k=ctx.top_k, single_index=single_index)
        return TaskModel(ctx.backbone, ctx.head(), plugin=plugin), {
            "zoo": ctx.zoo_record(names),
            "aggregation": {"mode": self.name, "top_k": ctx.top_k, "single_index": single_index},
        }


# The modes differ only in what ``ZooAggregate`` does with the gates: one subclass each.
for _name, _summary, _grid, _rank, _trains in (
    ("ens", "ViM's Ens-MoE: every zoo module runs, per-site softmax gates learned with the head", GATED_GRID, None, "zoo"),
    ("topk", "learned gates, only the top-k modules of each site run", GATED_GRID, None, "zoo"),
    ("uniform", "gates fixed equal over the zoo; only the head trains", HEAD_ONLY_GRID, None, "head"),
    ("merge", "learned gates over the modules' parameters: one module's inference cost", GATED_GRID, None, "zoo"),
):
    register_method(_name, _summary, grid=_grid, uses_zoo=True, auto_rank=_rank, trains=_trains)(
        type(f"ZooGates_{_name}", (ZooGates,), {}))


@register_method("single", "the one zoo module whose head scores best on validation", grid=({"lr": 3e-3},),
                 uses_zoo=True, trains="head")
class Single(ZooGates):
    """Every zoo module with its own head (one setting: one head per module); the best on validation."""

    def build(self, ctx: MethodContext, config: TrainConfig, single_index: int | None = 0
              ) -> tuple[TaskModel, dict]:
        return super().build(ctx, config, single_index=single_index)

    def train(self, ctx: MethodContext, config: TrainConfig, *, progress: bool | None = False) -> DownstreamResult:
        if not len(ctx.data.val):
            raise VimwError("method 'single' picks its module on validation images, and a true few-shot run (--shots) "
                            "has none: use zoo_ridge, or run without --shots")
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

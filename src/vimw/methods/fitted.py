"""Gates fitted to a held-out objective before the head trains (``vimw.aggregation.gatefit``).

``gates_ridge`` (by gradient) and ``gates_cma`` (by CMA-ES, pulled toward uniform as LoraHub
searches its weights): ViM gates times a per-site scale, fitted on the training images to the
leave-one-out loss of a closed-form ridge head on the gated features, then frozen while the
head trains. Validation data are not used by the fit.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from vimw.aggregation.gatefit import ScaledZooAggregate, fit_aggregate_gates
from vimw.methods.base import HEAD_ONLY_GRID, DownstreamMethod, MethodContext, register_method
from vimw.training import TaskModel, TrainConfig


class FittedGates(DownstreamMethod):
    """Scaled ViM gates fitted by ``strategy``; the fit is reused across a settings search."""

    strategy: ClassVar[str] = ""

    def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
        names, experts = ctx.experts(self.name)
        plugin = ScaledZooAggregate(experts, names, ctx.backbone, mode="ens")
        plugin.gate_logits.requires_grad_(False)  # fitted before the head trains, then frozen
        return TaskModel(ctx.backbone, ctx.head(), plugin=plugin), {
            "zoo": ctx.zoo_record(names),
            "aggregation": {"mode": "ens", "top_k": ctx.top_k, "single_index": None, "site_scale": True,
                            "fitted": self.strategy},
        }

    def prepare(self, model: TaskModel, ctx: MethodContext, config: TrainConfig) -> dict:
        return {"gate_fit": fitted_gates(model, ctx, self.strategy, config.seed)}


def fitted_gates(model: TaskModel, ctx: MethodContext, strategy: str, seed: int) -> dict:
    """Fit ``model``'s gates and site scales by ``strategy`` on the training images and set them.

    The fit depends only on the zoo, the training images and the seed, never on the head's
    settings, so one fit per context serves a whole settings search. Returns its record.
    """
    key = ("gate_fit", strategy, seed, tuple(model.plugin.names))
    if key not in ctx.cache:
        fit = fit_aggregate_gates(model, ctx.data.train.images, ctx.data.train.targets, strategy, seed=seed)
        ctx.cache[key] = (fit, model.plugin.gate_logits.detach().clone(), model.plugin.log_scale.detach().clone())
    fit, logits, log_scale = ctx.cache[key]
    with torch.no_grad():
        model.plugin.gate_logits.copy_(logits)
        model.plugin.log_scale.copy_(log_scale)
    return fit.to_dict()


@register_method("gates_ridge", "gates and per-site scales fitted by gradient to a ridge head's leave-one-out loss",
                 grid=HEAD_ONLY_GRID, uses_zoo=True, trains="head")
class GatesRidge(FittedGates):
    strategy: ClassVar[str] = "ridge"


@register_method("gates_cma", "the same objective searched gradient-free with CMA-ES, pulled toward uniform",
                 grid=HEAD_ONLY_GRID, uses_zoo=True, trains="head")
class GatesCma(FittedGates):
    strategy: ClassVar[str] = "cma"

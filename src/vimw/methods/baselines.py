"""The baselines, in the same harness as the zoo methods: a linear probe, a new module, full fine-tuning."""

from __future__ import annotations

import copy

from vimw.methods.base import HEAD_ONLY_GRID, DownstreamMethod, MethodContext, register_method
from vimw.modules import DEFAULT_MODULE_KIND, ModuleSet, config_from_dict
from vimw.training import TaskModel, TrainConfig


@register_method("linear_probe", "a head on the frozen backbone's features", grid=HEAD_ONLY_GRID, trains="head")
class LinearProbe(DownstreamMethod):
    def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
        return TaskModel(ctx.backbone, ctx.head()), {}


@register_method("scratch", "a new module of the zoo's kind, trained with the head (parameter-efficient tuning)",
                 auto_rank=1)
class Scratch(DownstreamMethod):
    def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
        kind_config = {"kind": DEFAULT_MODULE_KIND}
        if ctx.zoo is not None and len(ctx.zoo):
            kind_config = dict(ctx.zoo.manifest(ctx.zoo_names(self.name)[0]).module)
        module = ModuleSet.create(config_from_dict(kind_config), ctx.backbone.sites)
        return TaskModel(ctx.backbone, ctx.head(), plugin=module), {"module": module.config.to_dict()}


@register_method("full_ft", "full fine-tuning of the whole backbone with the head (a benchmark reference)",
                 grid=({"lr": 3e-4}, {"lr": 1e-3}), saved=False, trains="backbone")
class FullFineTune(DownstreamMethod):
    def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
        return TaskModel(copy.deepcopy(ctx.backbone).unfreeze(), ctx.head()), {}

"""The baselines, in the same harness as the zoo methods: a linear probe, a new module, full fine-tuning."""

from __future__ import annotations

import copy
from typing import ClassVar

from vimw.methods.base import HEAD_ONLY_GRID, MODULE_GRID, DownstreamMethod, MethodContext, register_method
from vimw.modules import DEFAULT_MODULE_KIND, ModuleSet, config_from_dict
from vimw.training import TaskModel, TrainConfig


@register_method
class LinearProbe(DownstreamMethod):
    name: ClassVar[str] = "linear_probe"
    summary: ClassVar[str] = "a head on the frozen backbone's features"
    auto_rank: ClassVar[int | None] = 0
    grid: ClassVar[tuple[dict, ...]] = HEAD_ONLY_GRID

    def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
        return TaskModel(ctx.backbone, ctx.head()), {}


@register_method
class Scratch(DownstreamMethod):
    name: ClassVar[str] = "scratch"
    summary: ClassVar[str] = "a new module of the zoo's kind, trained with the head (parameter-efficient tuning)"
    auto_rank: ClassVar[int | None] = 1
    grid: ClassVar[tuple[dict, ...]] = MODULE_GRID

    def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
        kind_config = {"kind": DEFAULT_MODULE_KIND}
        if ctx.zoo is not None and len(ctx.zoo):
            kind_config = dict(ctx.zoo.manifest(ctx.zoo_names(self.name)[0]).module)
        module = ModuleSet.create(config_from_dict(kind_config), ctx.backbone.sites)
        return TaskModel(ctx.backbone, ctx.head(), plugin=module), {"module": module.config.to_dict()}


@register_method
class FullFineTune(DownstreamMethod):
    name: ClassVar[str] = "full_ft"
    summary: ClassVar[str] = "full fine-tuning of the whole backbone with the head (a benchmark reference)"
    saved: ClassVar[bool] = False
    grid: ClassVar[tuple[dict, ...]] = ({"lr": 3e-4}, {"lr": 1e-3})

    def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
        return TaskModel(copy.deepcopy(ctx.backbone).unfreeze(), ctx.head()), {}

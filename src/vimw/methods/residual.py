"""A new module trained on top of the frozen zoo: ``zoo_residual``.

On tasks the zoo never saw, the zoo helps a closed-form head (``zoo_ridge`` over
``ridge_probe``) but a new module trained with the head (``scratch``) beats every closed-form
head. ``zoo_residual`` keeps both parts: ``zoo_ridge``'s frozen representation (the uniform zoo
ensemble amplified ``ZOO_RIDGE_SCALE`` times at every site) plus a new module of the zoo's
kind, zero at the start, summed site by site (``aggregation.residual.ZooResidual``) and
trained with the head exactly as ``scratch`` trains its module: same grid, same recipe, and
the same seeded draws of the new module and the head, so a paired difference with ``scratch``
isolates the zoo. Measured on the development tasks (``benchmarks/results/dev/NOTES.md``).

A step runs through every zoo module (``trains="zoo"``); it is not one of ``auto``'s
candidates, whose cross-validation must stay within twice a ``scratch`` run.
"""

from __future__ import annotations

import torch

from vimw.aggregation.residual import ZooResidual
from vimw.methods.base import MODULE_GRID, DownstreamMethod, MethodContext, register_method
from vimw.methods.closed_form import ZOO_RIDGE_SCALE, amplified_zoo
from vimw.modules import ModuleSet, config_from_dict
from vimw.training import TaskModel, TrainConfig


@register_method("zoo_residual", f"zoo_ridge's frozen zoo (uniform x{ZOO_RIDGE_SCALE:g}) plus a new module of the "
                                 "zoo's kind, trained with the head like scratch", grid=MODULE_GRID, uses_zoo=True,
                 trains="zoo")
class ZooResidualMethod(DownstreamMethod):
    scale = ZOO_RIDGE_SCALE

    def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
        names = ctx.zoo_names(self.name)
        # The new module first, drawn as scratch draws it; loading the zoo's modules builds them before
        # their weights arrive, which draws numbers, so it runs on a fork of the generator.
        module = ModuleSet.create(config_from_dict(dict(ctx.zoo.manifest(names[0]).module)), ctx.backbone.sites)
        with torch.random.fork_rng(devices=[]):
            zoo, record = amplified_zoo(ctx, self.name, self.scale)
        return TaskModel(ctx.backbone, ctx.head(), plugin=ZooResidual(zoo, module)), {
            **record, "module": module.config.to_dict()}

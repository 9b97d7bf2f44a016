"""A new module initialised from the zoo, then fine-tuned with the head like ``scratch``.

``zoo_init``: each site's parameters are the uniform average of the zoo modules' (what
``merge`` computes with uniform gates, at one module's cost). ``zoo_init_gated``: each site's
average is weighted by the softmax gates ``gates_ridge`` fits on the training images (no
validation data), and its output multiplied by the site scale fitted with them (the
module's last projection scaled: exact). Either is saved and served as one module.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from vimw.aggregation.aggregate import ZooAggregate, json_key
from vimw.aggregation.gates import merge_parameters, softmax_gates
from vimw.backbones import Backbone
from vimw.errors import VimwError
from vimw.methods.base import MODULE_GRID, DownstreamMethod, MethodContext, get_method, register_method
from vimw.methods.fitted import fitted_gates
from vimw.modules import ModuleSet, config_from_dict, get_module_kind
from vimw.training import TaskModel, TrainConfig


@register_method("zoo_init", "a new module initialised as the zoo modules' parameter average, then fine-tuned",
                 grid=MODULE_GRID, uses_zoo=True)
class ZooInit(DownstreamMethod):

    def site_weights(self, ctx: MethodContext, config: TrainConfig) -> dict[str, torch.Tensor] | None:
        """Per site, one weight per zoo module (``None``: uniform)."""
        return None

    def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
        names, experts = ctx.experts(self.name)
        weights = self.site_weights(ctx, config)
        module = zoo_average_module(experts, ctx.backbone, weights)
        gates = "uniform" if weights is None else {k: [round(float(g), 6) for g in v] for k, v in weights.items()}
        return TaskModel(ctx.backbone, ctx.head(), plugin=module), {
            "module": module.config.to_dict(),
            "init": {"from": "zoo_average", "gates": gates, "zoo_modules": ctx.zoo_record(names)["modules"]},
        }


@register_method("zoo_init_gated", "zoo_init with each site's average weighted by the gates gates_ridge fits",
                 grid=MODULE_GRID, uses_zoo=True)
class ZooInitGated(ZooInit):
    gates_from: ClassVar[str] = "gates_ridge"

    def before_seed(self, ctx: MethodContext, config: TrainConfig) -> None:
        """Fit the gates first (it builds and fits a gated model) so the seeded build stays as it was."""
        key = ("zoo_init_weights", self.gates_from, config.seed)
        if key in ctx.cache:
            return
        method = get_method(self.gates_from)
        gated, _ = method.build(ctx, config)
        gated.to(ctx.device())
        fitted_gates(gated, ctx, method.strategy, config.seed)
        with torch.no_grad():
            # The softmax gates weight the average (a scale would be renormalised away by it); the
            # site scales multiply the averaged module's output afterwards.
            ctx.cache[key] = (dict(zip(gated.plugin.site_names, ZooAggregate.gates(gated.plugin).cpu())),
                              dict(zip(gated.plugin.site_names, gated.plugin.site_scales().cpu().tolist())))

    def fitted(self, ctx: MethodContext, config: TrainConfig) -> tuple[dict, dict]:
        key = ("zoo_init_weights", self.gates_from, config.seed)
        if key not in ctx.cache:
            raise VimwError(f"method {self.name!r} is built from fitted gates: train it with train_downstream")
        return ctx.cache[key]

    def site_weights(self, ctx: MethodContext, config: TrainConfig) -> dict[str, torch.Tensor]:
        return self.fitted(ctx, config)[0]

    def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
        model, info = super().build(ctx, config)
        scales = self.fitted(ctx, config)[1]
        scale_site_outputs(model.plugin, scales)
        info["init"]["site_scales"] = {k: round(v, 6) for k, v in scales.items()}
        return model, info


def scale_site_outputs(module: ModuleSet, scales: dict[str, float]) -> None:
    """Multiply the output of ``module`` at each site by ``scales[site]`` (its last projection, bias included)."""
    with torch.no_grad():
        for site, scale in scales.items():
            layer = module[site].output_projection()
            if layer is None:
                raise VimwError(f"zoo_init_gated: module kind {module[site].kind!r} has no output projection to scale")
            layer.weight.mul_(scale)
            if layer.bias is not None:
                layer.bias.mul_(scale)


def zoo_average_module(experts: list[ModuleSet], backbone: Backbone,
                       weights: torch.Tensor | dict[str, torch.Tensor] | None = None) -> ModuleSet:
    """One trainable module whose parameters at each site are the weighted average of the zoo's.

    ``weights`` (``N``, default uniform; or a dict giving each site its own ``N`` weights)
    are renormalised over the modules present at a site, as the gates of mode ``merge``
    are; the result computes exactly what ``merge`` computes with those gates, at one
    module's cost, and then trains like a new module.
    """
    if len({json_key(e.config.to_dict()) for e in experts}) != 1:
        raise VimwError("zoo_init needs zoo modules of one kind and one configuration")
    if not get_module_kind(experts[0].kind).mergeable:
        raise VimwError(f"zoo_init averages parameters, which module kind {experts[0].kind!r} does not declare meaningful")
    module = ModuleSet.create(config_from_dict(experts[0].config.to_dict()), backbone.sites)

    def site_logits(site: str) -> torch.Tensor:
        w = weights.get(site) if isinstance(weights, dict) else weights
        if w is None:
            return torch.zeros(len(experts))
        w = torch.as_tensor(w, dtype=torch.float32)
        if w.shape != (len(experts),) or not bool((w >= 0).all()):
            raise VimwError(f"zoo_init: site {site!r} needs {len(experts)} non-negative weights, got {tuple(w.shape)}")
        return w.log()

    state = {}
    for site in module.site_names:
        present = torch.tensor([site in e for e in experts])
        if not bool(present.any()):
            raise VimwError(f"zoo_init: no zoo module has site {site!r}")
        gates = softmax_gates(site_logits(site), present)
        holders = [dict(e[site].named_parameters()) for e in experts if site in e]
        merged = merge_parameters(holders, gates[present])
        state.update({f"{site}.{k}": v.detach().clone() for k, v in merged.items()})
    module.load_weights(state)
    return module

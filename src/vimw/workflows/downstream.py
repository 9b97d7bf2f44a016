"""Downstream training: aggregate the zoo for one task, or run a baseline in the same harness.

Methods (one option, same data, same seeds, same loop):

- ``ens`` / ``topk`` / ``uniform`` / ``merge`` / ``single``: ViM aggregation over the zoo
  (gates + head train; backbone and zoo frozen);
- ``linear_probe``: head only on the frozen backbone;
- ``scratch``: a new module of the zoo's kind trained from scratch with the head
  (the usual parameter-efficient tuning);
- ``full_ft``: the whole backbone fine-tuned with the head;
- ``gates_ridge`` / ``gates_cma``: ViM gates times a per-site scale, fitted before the
  head to the leave-one-out loss of a ridge head on the gated features (by gradient, or
  by CMA-ES over per-module logits), then frozen while the head trains
  (``vimw.aggregation.gatefit``);
- ``zoo_init``: a new module initialised as the uniform parameter average of the zoo's
  modules, then fine-tuned with the head like ``scratch``; saved and run as one module.
- ``zoo_init_gated``: the same, with each site's average weighted by the gates that
  ``gates_ridge`` fits on the training images (a quick gate fit; no validation data).

Where only the head trains (linear probe, uniform, single, fitted gates), it trains on
features computed once per image and view (``workflows.headfit``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from vimw.aggregation.aggregate import MODES, ZooAggregate
from vimw.backbones import Backbone
from vimw.data import TaskData
from vimw.errors import VimwError
from vimw.evaluation.selection import best_candidate
from vimw.modules import DEFAULT_MODULE_KIND, ModuleSet, config_from_dict
from vimw.training import FitResult, TaskModel, TrainConfig, evaluate, fit, head_config_for
from vimw.workflows.headfit import fit_head, head_only
from vimw.zoo import Zoo

BASELINES = ("linear_probe", "scratch", "full_ft")
FITTED_GATES = {"gates_ridge": "ridge", "gates_cma": "cma"}
# Methods that use the zoo (what "the zoo helps" is measured over).
ZOO_INIT = {"zoo_init": None, "zoo_init_gated": "gates_ridge"}  # -> the gate fit that weights the average
ZOO_METHODS = MODES + tuple(FITTED_GATES) + tuple(ZOO_INIT)
METHODS = ZOO_METHODS + BASELINES
DEFAULT_GATE_LR = 0.05


def _aggregate_train() -> TrainConfig:
    return TrainConfig(epochs=30, lr=1e-2, batch_size=32, gate_lr=DEFAULT_GATE_LR, augment=True)


@dataclass(frozen=True)
class DownstreamSettings:
    """The defaults of one downstream run (``vimw aggregate``, a recipe's ``aggregate`` section)."""

    method: str = "auto"  # chooses among zoo methods, scratch and linear_probe on validation
    top_k: int = 2  # modules kept per site by ``topk``
    train: TrainConfig = field(default_factory=_aggregate_train)


@dataclass
class DownstreamResult:
    """One trained downstream method: its model, fit result, validation score and cost."""

    method: str
    model: TaskModel
    fit: FitResult
    val_score: float
    seconds: float
    trainable: int
    info: dict
    val_metrics: dict = field(default_factory=dict)  # loss and score on the validation split


def _zoo_names(zoo: Zoo | None, names: list[str] | None, backbone: Backbone) -> list[str]:
    if zoo is None:
        raise VimwError("the zoo methods (ens, topk, uniform, merge, single) need a zoo")
    names = names or [n for n, e in zoo.list() if e.get("fingerprint") == backbone.fingerprint()]
    if not names:
        raise VimwError(f"the zoo {zoo.root} has no module for backbone {backbone.arch}")
    return names


def build_model(
    method: str,
    backbone: Backbone,
    data: TaskData,
    *,
    zoo: Zoo | None = None,
    names: list[str] | None = None,
    top_k: int = 2,
    single_index: int | None = None,
    site_weights: dict[str, torch.Tensor] | None = None,
) -> tuple[TaskModel, dict]:
    """A fresh downstream model for ``method`` and what must be recorded to rebuild it.

    ``site_weights`` (per site, one weight per zoo module) weight ``zoo_init_gated``'s average.
    """
    head = head_config_for(backbone, data.kind, data.num_classes)
    if method in MODES:
        if zoo is None:
            raise VimwError(f"method {method!r} needs a zoo")
        names = _zoo_names(zoo, names, backbone)
        experts = [zoo.load(n, backbone) for n in names]
        plugin = ZooAggregate(experts, names, backbone, mode=method, top_k=top_k, single_index=single_index)
        index = zoo.read_index()
        info = {
            "zoo": {"path": str(zoo.root.resolve()), "modules": [{"name": n, "sha256": index[n]["sha256"]} for n in names]},
            "aggregation": {"mode": method, "top_k": top_k, "single_index": single_index},
        }
        return TaskModel(backbone, head, plugin=plugin), info
    if method in FITTED_GATES:
        from vimw.aggregation.gatefit import ScaledZooAggregate

        if zoo is None:
            raise VimwError(f"method {method!r} needs a zoo")
        names = _zoo_names(zoo, names, backbone)
        plugin = ScaledZooAggregate([zoo.load(n, backbone) for n in names], names, backbone, mode="ens")
        plugin.gate_logits.requires_grad_(False)  # fitted before the head trains, then frozen
        index = zoo.read_index()
        info = {
            "zoo": {"path": str(zoo.root.resolve()), "modules": [{"name": n, "sha256": index[n]["sha256"]} for n in names]},
            "aggregation": {"mode": "ens", "top_k": top_k, "single_index": None, "site_scale": True,
                            "fitted": FITTED_GATES[method]},
        }
        return TaskModel(backbone, head, plugin=plugin), info
    if method in ZOO_INIT:
        if zoo is None:
            raise VimwError(f"method {method!r} needs a zoo")
        names = _zoo_names(zoo, names, backbone)
        if ZOO_INIT[method] is not None and site_weights is None:
            raise VimwError(f"method {method!r} is built from fitted gates: train it with train_downstream")
        module = zoo_average_module([zoo.load(n, backbone) for n in names], backbone, site_weights)
        index = zoo.read_index()
        gates = "uniform" if site_weights is None else {k: [round(float(g), 6) for g in v] for k, v in site_weights.items()}
        return TaskModel(backbone, head, plugin=module), {
            "module": module.config.to_dict(),
            "init": {"from": "zoo_average", "gates": gates,
                     "zoo_modules": [{"name": n, "sha256": index[n]["sha256"]} for n in names]},
        }
    if method == "linear_probe":
        return TaskModel(backbone, head), {}
    if method == "scratch":
        kind_config = {"kind": DEFAULT_MODULE_KIND}
        if zoo is not None and len(zoo):
            first = zoo.manifest(_zoo_names(zoo, names, backbone)[0]).module
            kind_config = dict(first)
        module = ModuleSet.create(config_from_dict(kind_config), backbone.sites)
        return TaskModel(backbone, head, plugin=module), {"module": module.config.to_dict()}
    if method == "full_ft":
        tuned = copy.deepcopy(backbone).unfreeze()
        return TaskModel(tuned, head), {}
    raise VimwError(f"unknown method {method!r}; choose from {METHODS}")


def zoo_average_module(experts: list[ModuleSet], backbone: Backbone,
                       weights: torch.Tensor | dict[str, torch.Tensor] | None = None) -> ModuleSet:
    """One trainable module whose parameters at each site are the weighted average of the zoo's.

    ``weights`` (``N``, default uniform; or a dict giving each site its own ``N`` weights)
    are renormalised over the modules present at a site, as the gates of mode ``merge``
    are; the result computes exactly what ``merge`` computes with those gates, at one
    module's cost, and then trains like a new module.
    """
    from vimw.aggregation.aggregate import json_key
    from vimw.aggregation.gates import merge_parameters, softmax_gates

    if len({json_key(e.config.to_dict()) for e in experts}) != 1:
        raise VimwError("zoo_init needs zoo modules of one kind and one configuration")
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


def train_downstream(
    method: str,
    backbone: Backbone,
    data: TaskData,
    config: TrainConfig,
    *,
    zoo: Zoo | None = None,
    names: list[str] | None = None,
    top_k: int = 2,
    progress: bool | None = False,
) -> DownstreamResult:
    """Train one method on ``data``; ``single`` first picks its module on validation data."""
    started = time.perf_counter()
    info_extra = {}
    if method == "single":
        # Every zoo module is tried with its own head; the best on validation is kept as it
        # was trained (no second run: it would repeat the same seeded computation).
        names = _zoo_names(zoo, names, backbone)
        candidates = [_train_one("single", backbone, data, config, zoo, names, top_k, index, progress)
                      for index in range(len(names))]
        scores = [c[2].best_score for c in candidates]
        model, info, result = candidates[best_candidate([c[2].best_metrics for c in candidates])]
        chosen = names[info["aggregation"]["single_index"]]
        info_extra = {"single_val_scores": dict(zip(names, scores)), "chosen": chosen}
    else:
        model, info, result = _train_one(method, backbone, data, config, zoo, names, top_k, None, progress)
    val = evaluate(model, data.val, config.eval_batch_size)
    return DownstreamResult(
        method=method,
        model=model,
        fit=result,
        val_score=val["score"],
        seconds=time.perf_counter() - started,
        trainable=model.num_trainable(),
        info={**info, **info_extra},
        val_metrics=dict(val),
    )


_GATE_FITS: dict[tuple, tuple] = {}  # the last gate fit, reused across a settings search


def _apply_gate_fit(model: TaskModel, method: str, backbone: Backbone, data: TaskData, config: TrainConfig) -> dict:
    """Fit ``model``'s gates and per-site scales (``method`` in ``FITTED_GATES``) and set them.

    They are fitted on the training images' held-out (leave-one-out) ridge loss, then frozen
    while the head trains; validation data are not used. The fit does not depend on the
    head's settings, so a settings search reuses it. Returns the fit's record.
    """
    from vimw.aggregation.gatefit import fit_aggregate_gates

    key = (FITTED_GATES[method], config.seed, tuple(model.plugin.names), backbone.fingerprint(),
           data.spec.name, tuple(data.train.images.shape), float(data.train.images.double().sum()),
           tuple(data.train.targets.tolist()))
    if key not in _GATE_FITS:
        _GATE_FITS.clear()
        gatefit = fit_aggregate_gates(model, data.train.images, data.train.targets, FITTED_GATES[method],
                                      seed=config.seed)
        _GATE_FITS[key] = (gatefit, model.plugin.gate_logits.detach().clone(), model.plugin.log_scale.detach().clone())
    gatefit, logits, log_scale = _GATE_FITS[key]
    with torch.no_grad():
        model.plugin.gate_logits.copy_(logits)
        model.plugin.log_scale.copy_(log_scale)
    return gatefit.to_dict()


def _train_one(method, backbone, data, config, zoo, names, top_k, single_index, progress):
    """Build a fresh model for ``method`` and fit it: (model, info, fit result)."""
    site_weights = None
    if ZOO_INIT.get(method):  # the average's weights: the gates a gated method fits first
        gated, _ = build_model(ZOO_INIT[method], backbone, data, zoo=zoo, names=names)
        gated.to(next(backbone.parameters()).device)
        _apply_gate_fit(gated, ZOO_INIT[method], backbone, data, config)
        with torch.no_grad():
            # the softmax gates alone: a site scale would be renormalised away by the average
            site_weights = dict(zip(gated.plugin.site_names, ZooAggregate.gates(gated.plugin).cpu()))
        del gated
    # New heads (and a scratch module) are initialised from the run's seed: same seed, same result.
    torch.manual_seed(config.seed)
    model, info = build_model(method, backbone, data, zoo=zoo, names=names, top_k=top_k, single_index=single_index,
                              site_weights=site_weights)
    model.to(next(backbone.parameters()).device)  # zoo modules and heads are built on the CPU
    if method in FITTED_GATES:
        info = {**info, "gate_fit": _apply_gate_fit(model, method, backbone, data, config)}
    if head_only(model):  # frozen below the head: features computed once per image and view
        return model, {**info, "head_training": "cached features"}, fit_head(model, data, config, progress=progress)
    return model, info, fit(model, data, config, progress=progress)

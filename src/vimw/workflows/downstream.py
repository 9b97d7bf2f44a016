"""Downstream training: aggregate the zoo for one task, or run a baseline in the same harness.

Methods (one option, same data, same seeds, same loop):

- ``ens`` / ``topk`` / ``uniform`` / ``merge`` / ``single``: ViM aggregation over the zoo
  (gates + head train; backbone and zoo frozen);
- ``linear_probe``: head only on the frozen backbone;
- ``scratch``: a new module of the zoo's kind trained from scratch with the head
  (the usual parameter-efficient tuning);
- ``full_ft``: the whole backbone fine-tuned with the head.
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
from vimw.modules import DEFAULT_MODULE_KIND, ModuleSet, config_from_dict
from vimw.training import FitResult, TaskModel, TrainConfig, evaluate, fit, head_config_for
from vimw.zoo import Zoo

BASELINES = ("linear_probe", "scratch", "full_ft")
METHODS = MODES + BASELINES
DEFAULT_GATE_LR = 0.05


def _aggregate_train() -> TrainConfig:
    return TrainConfig(epochs=30, lr=1e-2, batch_size=32, gate_lr=DEFAULT_GATE_LR)


@dataclass(frozen=True)
class DownstreamSettings:
    """The defaults of one downstream run (``vimw aggregate``, a recipe's ``aggregate`` section)."""

    method: str = "ens"
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
) -> tuple[TaskModel, dict]:
    """A fresh downstream model for ``method`` and what must be recorded to rebuild it."""
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
        scores, best = [], None
        for index in range(len(names)):
            candidate = _train_one("single", backbone, data, config, zoo, names, top_k, index, progress)
            scores.append(candidate[2].best_score)
            if best is None or scores[-1] > best[2].best_score:
                best = candidate
        model, info, result = best
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
    )


def _train_one(method, backbone, data, config, zoo, names, top_k, single_index, progress):
    """Build a fresh model for ``method`` and fit it: (model, info, fit result)."""
    # New heads (and a scratch module) are initialised from the run's seed: same seed, same result.
    torch.manual_seed(config.seed)
    model, info = build_model(method, backbone, data, zoo=zoo, names=names, top_k=top_k, single_index=single_index)
    model.to(next(backbone.parameters()).device)  # zoo modules and heads are built on the CPU
    return model, info, fit(model, data, config, progress=progress)

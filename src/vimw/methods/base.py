"""What a downstream method is, and the registry of methods.

A method (``scratch``, ``ens``, ``zoo_init``, ...) is one registered object that knows how to
*build* a fresh downstream model from a context (backbone, task, zoo), what to do to it
*before* training (e.g. fit its gates), how to *fit* it, and what to *record* so the saved
model can be rebuilt (the record is the method's part of the model's manifest; tensors are
saved by ``vimw.aggregation.store`` from the model itself). It also carries its *search grid*:
the settings tried on held-out data, the same whether it runs alone (``vimw aggregate
--method NAME``) or as a candidate of ``auto``.

Register a new method by subclassing :class:`DownstreamMethod` (at least its ``build``) and
decorating it with ``@register_method("name", "what it does", grid=..., uses_zoo=...)``;
``vimw aggregate --method``, ``auto``, the benchmark and the contract tests read the registry,
so nothing else needs an edit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from vimw.backbones import Backbone
from vimw.data import TaskData
from vimw.errors import RegistryError, VimwError
from vimw.evaluation import evaluate, predict_logits
from vimw.modules import ModuleSet
from vimw.training import FitResult, TaskModel, TrainConfig, fit, head_config_for
from vimw.training.headfit import fit_head, head_only
from vimw.training.heads import HeadConfig
from vimw.zoo import Zoo

# Search grids (settings tried on held-out data). Gates and heads tolerate large steps; a full
# backbone needs small ones. Learned gates get their own rate (the plug-in's "gates" group):
# with the head's rate they stay near uniform.
# The first setting of a grid is the one used when nothing can be held out to choose (one image
# per class), and wins full ties: grids are ordered on the development tasks (fmnist-apparel and
# photos, 1 shot, seeds 100-109, benchmarks/results/dev/unseen.md: a new module at lr 1e-3 +0.4
# [-1.1, +2.0] points over 3e-3; a head at 3e-3 +1.5 [+0.1, +2.8] over 3e-2). A new module at lr
# 1e-2 can stay at chance (8x8 digits, 5 shots: 2 of 4 splits; benchmarks/results/dev/NOTES.md).
HEAD_ONLY_GRID: tuple[dict, ...] = ({"lr": 3e-3}, {"lr": 3e-2})
GATED_GRID: tuple[dict, ...] = ({"lr": 3e-3, "gate_lr": 0.05}, {"lr": 3e-2, "gate_lr": 0.5})
MODULE_GRID: tuple[dict, ...] = ({"lr": 1e-3}, {"lr": 3e-3})


@dataclass
class FitHooks:
    """What a training run reports to after each epoch, and asks after each step (stop: a deadline)."""

    on_epoch_end: Callable[[int, dict], None] | None = None
    stop: Callable[[], bool] | None = None


@dataclass
class MethodContext:
    """What a method builds from: the frozen backbone, the task's data, the zoo and its chosen modules.

    ``cache`` keeps what a settings search can reuse across its runs on the same data (a gate
    fit does not depend on the head's learning rate); make a new context for new data.
    """

    backbone: Backbone
    data: TaskData
    zoo: Zoo | None = None
    names: list[str] | None = None  # zoo modules to use (default: every module on this backbone)
    top_k: int = 2  # modules kept per site by ``topk``
    cache: dict[Any, Any] = field(default_factory=dict)
    hooks: FitHooks = field(default_factory=FitHooks)

    def require_zoo(self, method: str) -> Zoo:
        if self.zoo is None:
            raise VimwError(f"method {method!r} needs a zoo (--zoo)")
        return self.zoo

    def zoo_names(self, method: str) -> list[str]:
        """The zoo modules this run uses (every module recorded for this backbone by default)."""
        zoo = self.require_zoo(method)
        names = self.names or [n for n, e in zoo.list() if e.get("fingerprint") == self.backbone.fingerprint()]
        if not names:
            raise VimwError(f"the zoo {zoo.root} has no module for backbone {self.backbone.arch}")
        return list(names)

    def experts(self, method: str) -> tuple[list[str], list[ModuleSet]]:
        """The chosen zoo modules, loaded (and checked) for this backbone."""
        names = self.zoo_names(method)
        return names, [self.zoo.load(n, self.backbone) for n in names]

    def zoo_record(self, names: list[str]) -> dict:
        """The manifest's record of the zoo modules a model uses: the zoo's path, names and checksums."""
        index = self.zoo.read_index()
        return {"path": str(self.zoo.root.resolve()),
                "modules": [{"name": n, "sha256": index[n]["sha256"]} for n in names]}

    def head(self) -> HeadConfig:
        return head_config_for(self.backbone, self.data.kind, self.data.num_classes)

    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device


@dataclass
class DownstreamResult:
    """One trained downstream method: its model, fit result, validation score and cost."""

    method: str
    model: TaskModel
    fit: FitResult
    val_score: float
    seconds: float
    trainable: int
    info: dict  # the method's record (goes into the saved model's manifest)
    val_metrics: dict = field(default_factory=dict)  # loss and score on the validation split


class DownstreamMethod:
    """One downstream method: build, prepare, fit, and the grid of settings it is searched over."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    uses_zoo: ClassVar[bool] = False  # what "the zoo helps" is measured over
    saved: ClassVar[bool] = True  # whether its models can be saved (full fine-tuning: no)
    auto_rank: ClassVar[int | None] = None  # position among auto's candidates (None: not one)
    grid: ClassVar[tuple[dict, ...]] = MODULE_GRID
    trains: ClassVar[str] = "module"  # what a step runs through: "head", "module", "zoo" or "backbone"
    closed_form: ClassVar[bool] = False  # its head is solved, not trained: seconds, no learning rate to set

    def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
        """A fresh model for this task and the record that rebuilds it (fresh heads seeded by the caller)."""
        raise NotImplementedError

    def prepare(self, model: TaskModel, ctx: MethodContext, config: TrainConfig) -> dict:
        """Anything done to a built model before training (e.g. fitting its gates); returns its record."""
        return {}

    def fit(self, model: TaskModel, ctx: MethodContext, config: TrainConfig, progress: bool | None) -> FitResult:
        """Train what the model leaves trainable; the epoch is chosen on validation by the engine.

        Without validation images (true few-shot) the run trains its configured steps and
        keeps the last state.
        """
        hooks = {"on_epoch_end": ctx.hooks.on_epoch_end, "stop": ctx.hooks.stop,
                 "keep_last": not len(ctx.data.val)}
        if head_only(model):  # frozen below the head: features computed once per image and view
            return fit_head(model, ctx.data, config, progress=progress, **hooks)
        return fit(model, ctx.data, config, progress=progress, **hooks)

    def held_out_logits(self, ctx: MethodContext, config_for: Callable[[int], TrainConfig],
                        folds: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[torch.Tensor]:
        """For each fold ``(train rows, held-out rows)`` of ``ctx.data.train``: the held-out images'
        logits from a model fitted on the fold's other images only (no validation), with
        ``config_for(number of training images)``."""
        out = []
        for kept, held in folds:
            config = config_for(len(kept))
            labelled = ctx.data.train
            fold = TaskData(ctx.data.spec, labelled.subset(kept, name=f"{labelled.name}/fold-train"),
                            labelled.subset([], name=f"{labelled.name}/no-val"), ctx.data.test)
            # A fold's own cache (a gate fit on its images is reused across settings, never across folds).
            cache = ctx.cache.setdefault(("fold", tuple(int(i) for i in kept)), {})
            sub = MethodContext(ctx.backbone, fold, zoo=ctx.zoo, names=ctx.names, top_k=ctx.top_k, cache=cache,
                                hooks=ctx.hooks)
            result = self.train(sub, config)
            out.append(predict_logits(result.model, labelled.images[torch.as_tensor(held)], config.eval_batch_size).cpu())
        return out

    def train(self, ctx: MethodContext, config: TrainConfig, *, progress: bool | None = False) -> DownstreamResult:
        """Build, prepare and fit one model with ``config``; score it on validation."""
        started = time.perf_counter()
        model, info = self.build_seeded(ctx, config)
        info = {**info, **self.prepare(model, ctx, config)}
        if head_only(model):
            info["head_training"] = "cached features"
        result = self.fit(model, ctx, config, progress)
        return finish(self.name, model, info, result, ctx, config, started)

    def before_seed(self, ctx: MethodContext, config: TrainConfig) -> None:
        """Work ``build`` needs that must not move the seeded initialisation (e.g. a gate fit)."""

    def build_seeded(self, ctx: MethodContext, config: TrainConfig, **options) -> tuple[TaskModel, dict]:
        """``build`` with new heads (and new modules) initialised from the run's seed: same seed, same result."""
        self.before_seed(ctx, config)
        torch.manual_seed(config.seed)
        model, info = self.build(ctx, config, **options)
        return model.to(ctx.device()), info  # zoo modules and heads are built on the CPU


def finish(name: str, model: TaskModel, info: dict, result: FitResult, ctx: MethodContext, config: TrainConfig,
           started: float) -> DownstreamResult:
    """The result of a trained model: its validation numbers, cost and record."""
    # No validation images (true few-shot): nothing to score; choices were made by cross-validation.
    val = evaluate(model, ctx.data.val, config.eval_batch_size) if len(ctx.data.val) else \
        {"score": math.nan, "loss": math.nan}
    return DownstreamResult(method=name, model=model, fit=result, val_score=val["score"],
                            seconds=time.perf_counter() - started, trainable=model.num_trainable(), info=info,
                            val_metrics=dict(val))


# -- the registry -------------------------------------------------------------------------------------
_METHODS: dict[str, DownstreamMethod] = {}


TRAINS = ("head", "module", "zoo", "backbone")


def register_method(name: str, summary: str, *, grid: tuple[dict, ...] = MODULE_GRID, uses_zoo: bool = False,
                    saved: bool = True, auto_rank: int | None = None, trains: str = "module"):
    """Class decorator: register one instance of a :class:`DownstreamMethod` subclass as ``name``.

    ``grid``: the settings searched on held-out data; ``uses_zoo``: whether it reads the zoo
    (what "the zoo helps" is measured over); ``saved``: whether its models can be saved;
    ``auto_rank``: its place among ``auto``'s candidates (``None``: not one); ``trains``: what a
    training step runs through (``"head"``: cached features; ``"module"``: the backbone with one
    new module; ``"zoo"``: the backbone with every zoo module; ``"backbone"``: the whole backbone
    trains), for cost estimates.
    """
    if not name or not isinstance(name, str) or name == "auto":
        raise RegistryError(f"a downstream method needs a name other than 'auto', got {name!r}")
    if name in _METHODS:
        raise RegistryError(f"downstream method {name!r} is registered twice")
    if not grid:
        raise RegistryError(f"downstream method {name!r} needs at least one setting in its grid")
    if trains not in TRAINS:
        raise RegistryError(f"downstream method {name!r}: trains must be one of {TRAINS}, got {trains!r}")

    def decorator(cls: type[DownstreamMethod]) -> type[DownstreamMethod]:
        cls.name, cls.summary, cls.grid = name, summary, tuple(grid)
        cls.uses_zoo, cls.saved, cls.auto_rank, cls.trains = uses_zoo, saved, auto_rank, trains
        _METHODS[name] = cls()
        return cls

    return decorator


def unregister_method(name: str) -> None:
    """Remove a registered method (for tests that register a toy one)."""
    _METHODS.pop(name, None)


def get_method(name: str) -> DownstreamMethod:
    """The registered method ``name``; a ``VimwError`` listing the known ones otherwise."""
    method = _METHODS.get(name)
    if method is None:
        raise VimwError(f"unknown method {name!r}; choose from {', '.join(list_methods())}")
    return method


def list_methods(*, where: Callable[[DownstreamMethod], bool] | None = None) -> tuple[str, ...]:
    """Registered method names in registration order (``where`` filters them)."""
    return tuple(n for n, m in _METHODS.items() if where is None or where(m))


def zoo_methods() -> tuple[str, ...]:
    """The methods that use the zoo."""
    return list_methods(where=lambda m: m.uses_zoo)


def auto_candidates() -> tuple[str, ...]:
    """The methods ``auto`` chooses among, in the order it tries them."""
    ranked = [(m.auto_rank, n) for n, m in _METHODS.items() if m.auto_rank is not None]
    return tuple(n for _, n in sorted(ranked))


def train_downstream(method: str, backbone: Backbone, data: TaskData, config: TrainConfig, *,
                     zoo: Zoo | None = None, names: list[str] | None = None, top_k: int = 2,
                     progress: bool | None = False, context: MethodContext | None = None) -> DownstreamResult:
    """Train one registered method on ``data`` with ``config`` (one setting; no search)."""
    ctx = context or MethodContext(backbone, data, zoo=zoo, names=names, top_k=top_k)
    return get_method(method).train(ctx, config, progress=progress)


def build_model(method: str, backbone: Backbone, data: TaskData, *, zoo: Zoo | None = None,
                names: list[str] | None = None, top_k: int = 2, config: TrainConfig | None = None,
                **options) -> tuple[TaskModel, dict]:
    """A fresh, untrained model for ``method`` and its record (``prepare`` not run).

    ``options`` go to the method's ``build`` (e.g. ``single_index`` for ``single``).
    """
    ctx = MethodContext(backbone, data, zoo=zoo, names=names, top_k=top_k)
    return get_method(method).build(ctx, config or TrainConfig(), **options)



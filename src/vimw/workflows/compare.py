"""Downstream methods side by side: same task, same shots, same seed, same loop.

Each method's learning rate is chosen on the validation split (never test) from a
small grid by the one selection rule (``evaluation.selection``: accuracy, ties broken by
the lower loss); the chosen model is then scored once on test. ``run_auto`` is
``vimw aggregate --method auto``: the same search over several methods, then the same
rule across methods (optionally on k-fold cross-validation). Used by the README demo and
by ``benchmarks/downstream.py``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from vimw.backbones import Backbone
from vimw.data import TaskData
from vimw.errors import VimwError
from vimw.evaluation import evaluate
from vimw.evaluation.selection import SCORE_TIE, SELECTION_RULE, best_candidate
from vimw.methods import FitHooks, MethodContext, auto_candidates, get_method
from vimw.training import TrainConfig
from vimw.zoo import Zoo

@dataclass(frozen=True)
class SearchSettings:
    """How every method trains and has its settings chosen: one recipe, alone or inside ``auto``.

    Epochs are sized to reach about ``steps`` optimiser steps whatever the shot count
    (``epochs`` fixes them instead). Each method's own grid (``DownstreamMethod.grid``) is
    searched on validation unless ``lr`` / ``gate_lr`` fix the rate.
    """

    steps: int = 120
    batch_size: int = 32
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    augment: bool = True
    seed: int = 0
    epochs: int | None = None
    lr: float | None = None
    gate_lr: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or self.steps < 1:
            raise VimwError(f"steps must be >= 1, got {self.steps}")
        if self.epochs is not None and self.epochs < 1:
            raise VimwError(f"epochs must be >= 1, got {self.epochs}")
        self.base_config(1)  # TrainConfig's own range checks (batch size, rates, warm-up)

    def base_config(self, num_train: int) -> TrainConfig:
        """The training settings of one run on ``num_train`` images (its rate set by the grid)."""
        steps_per_epoch = max(1, math.ceil(num_train / self.batch_size))
        epochs = self.epochs or max(3, math.ceil(self.steps / steps_per_epoch))
        return TrainConfig(epochs=epochs, batch_size=self.batch_size, seed=self.seed, lr=self.lr or 1e-3,
                           warmup_fraction=self.warmup_fraction, weight_decay=self.weight_decay,
                           augment=self.augment, gate_lr=self.gate_lr)

    def grid(self, method: str) -> tuple[dict, ...]:
        """The settings tried for ``method``: its registered grid, or the one rate the user fixed."""
        grid = get_method(method).grid
        if self.lr is None and self.gate_lr is None:
            return grid
        fixed = {k: v for k, v in (("lr", self.lr), ("gate_lr", self.gate_lr)) if v is not None}
        return ({**grid[0], **fixed},)

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "SearchSettings":
        return replace(self, **changes)


@dataclass
class MethodRow:
    """One method's result on one task, shot count and seed: chosen settings, scores, cost."""

    task: str
    shots: int | None
    seed: int
    method: str
    lr: float
    gate_lr: float | None
    val: float
    test: float
    trainable: int
    seconds: float
    epochs: int  # ``seconds``: the chosen run's training time (the lr search ran len(grid) of them)
    val_loss: float = math.nan
    test_loss: float = math.nan
    augment: bool = False
    selection: str = "holdout"  # how settings (and, for auto, methods) were chosen
    candidates: list = field(default_factory=list)  # every setting (or method) tried: its val score and loss
    chosen: str | None = None  # auto / best-zoo rows: the method they picked
    search_seconds: float = 0.0  # all settings tried, not only the kept one
    info: dict = field(default_factory=dict)
    test_metrics: dict = field(default_factory=dict)  # every test metric of the kept setting
    cut_short: bool = False  # a run was stopped by the deadline (its best epoch so far was kept)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def val_metrics(self) -> dict[str, float]:
        return {"score": self.val, "loss": self.val_loss}


def choose(rows: Sequence[MethodRow], among: Sequence[str], label: str, *,
           metrics: dict[str, dict] | None = None, selection: str | None = None) -> MethodRow | None:
    """The row ``among`` these methods that the selection rule keeps on validation, relabelled ``label``.

    ``metrics`` (per method, ``{"score", "loss"}``), e.g. means over cross-validation folds,
    replace each row's own validation numbers for the choice; ``selection`` then names them.
    Its test numbers are the chosen method's (test is never looked at to choose).
    """
    pool = [r for r in rows if r.method in among and (metrics is None or r.method in metrics)]
    if not pool:
        return None
    scores = [metrics[r.method] if metrics is not None else r.val_metrics for r in pool]
    best = pool[best_candidate(scores)]
    return replace(best, method=label, chosen=best.method,
                   selection=f"{selection or best.selection}, among methods",
                   candidates=[{"method": r.method, "val": r.val, "val_loss": r.val_loss,
                                **({"cv": metrics[r.method]} if metrics is not None else {})} for r in pool],
                   search_seconds=round(sum(r.search_seconds for r in pool), 2))


def compare_methods(
    backbone: Backbone,
    data: TaskData,
    methods: Sequence[str],
    *,
    zoo: Zoo | None,
    shots: int | None,
    settings: SearchSettings = SearchSettings(),
    names: list[str] | None = None,
    on_result=None,
    deadline: float | None = None,
    grids: dict[str, tuple[dict, ...]] | None = None,
    reporter=None,
    score_test: bool = True,
) -> list[MethodRow]:
    """Train every method with each setting of its grid; keep the setting the selection rule picks.

    Runs share one :class:`MethodContext`, so work that does not depend on the settings (a
    gate fit) is done once. Each row records every setting's validation numbers.
    ``deadline`` (a ``time.perf_counter()`` value) is a real deadline: a run still training
    then stops and keeps the best of what it did (its row is marked ``cut_short``); methods not
    started by then are skipped. The first run always completes, so there is a result.
    ``reporter`` (a ``workflows.reporting.SearchReporter``) is told what happens;
    ``score_test=False`` leaves test unscored (``auto`` scores only what it keeps).
    ``grids`` replaces a method's registered grid, for experiments only (``auto``, ``vimw
    aggregate`` and the benchmarks search the registered grids).
    """
    for method in methods:  # refuse before training anything
        get_method(method)
    base = settings.base_config(len(data.train))
    context = MethodContext(backbone, data, zoo=zoo, names=names)
    past = (lambda: deadline is not None and time.perf_counter() > deadline)
    rows: list[MethodRow] = []
    for position, method in enumerate(methods):
        if rows and past():
            if reporter is not None:
                reporter.skipped(method, "not started: the budget ran out")
            continue
        started = time.perf_counter()
        tried, cut = search_settings(context, method, base, (grids or {}).get(method) or settings.grid(method),
                                     past, reporter, first=not rows)
        if not tried:
            if reporter is not None:
                reporter.skipped(method, "cut short by the budget before a usable epoch: left out")
            continue
        config, result = tried[best_candidate([r.val_metrics for _, r in tried])]
        test = evaluate(result.model, data.test, base.eval_batch_size) if score_test else {}
        row = MethodRow(
            task=data.spec.name, shots=shots, seed=settings.seed, method=method, lr=config.lr,
            gate_lr=config.gate_lr, val=result.val_score, test=test.get("score", math.nan),
            trainable=result.trainable, seconds=round(result.seconds, 2), epochs=base.epochs,
            val_loss=result.val_metrics.get("loss", math.nan), test_loss=test.get("loss", math.nan),
            augment=base.augment,
            candidates=[{"lr": c.lr, "gate_lr": c.gate_lr, "val": r.val_score, "val_loss": r.val_metrics.get("loss"),
                         "best_epoch": r.fit.best_epoch, "cut_short": r.fit.stopped} for c, r in tried],
            search_seconds=round(sum(r.seconds for _, r in tried), 2),
            info={k: v for k, v in result.info.items() if k in ("gate_fit", "chosen", "single_val_scores")},
            test_metrics=dict(test), cut_short=cut,
        )
        rows.append(row)
        if reporter is not None:
            reporter.method_finished(method, time.perf_counter() - started, methods[position + 1:])
        if on_result is not None:
            on_result(row, result)
    return rows


def search_settings(context: MethodContext, method: str, base: TrainConfig, grid: Sequence[dict], past,
                    reporter, *, first: bool) -> tuple[list, bool]:
    """Train ``method`` with each setting until the deadline: ``([(config, result)], cut short?)``.

    A run cut before it kept any epoch is left out; the very first run of a search is never cut.
    """
    tried, cut = [], False
    for index, setting in enumerate(grid):
        if past() and not (first and index == 0):
            return tried, True
        config = base.replace(**setting)
        if reporter is not None:
            reporter.run_started(method, index, len(grid), config)

        def stop() -> bool:
            if reporter is not None:
                reporter.tick()
            return past() and not (first and index == 0)

        context.hooks = FitHooks(reporter.epoch if reporter is not None else None, stop)
        result = get_method(method).train(context, config)
        if reporter is not None:
            reporter.run_finished(result, result.fit.stopped)
        cut = cut or result.fit.stopped
        if result.fit.best_epoch >= 0:
            tried.append((config, result))
    return tried, cut


def kfold_tasks(data: TaskData, folds: int, seed: int) -> list[TaskData]:
    """``folds`` stratified splits of the labelled images (train + val pooled): each fold is
    the validation split once, the rest train. Test is untouched."""
    import numpy as np

    from vimw.data import ImageSet

    if folds < 2:
        raise VimwError(f"cross-validation needs at least 2 folds, got {folds}")
    images = torch.cat([data.train.images, data.val.images])
    targets = torch.cat([data.train.targets, data.val.targets])
    pooled = ImageSet(images, targets, data.train.class_names, f"{data.spec.name}/labelled")
    rng = np.random.default_rng([91, int(seed)])
    fold_of = np.zeros(len(targets), dtype=np.int64)
    for label in np.unique(targets.numpy()):
        members = rng.permutation(np.flatnonzero(targets.numpy() == label))
        if len(members) < folds:
            raise VimwError(f"class {data.class_names[label]!r} has {len(members)} labelled images, "
                            f"fewer than the {folds} folds asked for")
        fold_of[members] = np.arange(len(members)) % folds
    splits = []
    for fold in range(folds):
        held = np.flatnonzero(fold_of == fold)
        kept = np.flatnonzero(fold_of != fold)
        splits.append(TaskData(data.spec, pooled.subset(kept, name=f"{data.spec.name}/cv{fold}-train"),
                               pooled.subset(held, name=f"{data.spec.name}/cv{fold}-val"), data.test))
    return splits


def kfold_metrics(backbone: Backbone, data: TaskData, methods: Sequence[str], *, folds: int,
                  settings: SearchSettings = SearchSettings(), **search) -> dict[str, dict]:
    """Each method's mean validation ``{"score", "loss"}`` over ``folds`` folds of the labelled
    images (each fold trains on the rest, settings searched within it). ``search`` are
    :func:`compare_methods`' options (``zoo``, ``shots``, ``names``, ``deadline``, ...). A method
    the deadline kept from finishing every fold is left out."""
    per_method: dict[str, list[dict]] = {m: [] for m in methods}
    for split in kfold_tasks(data, folds, settings.seed):
        for r in compare_methods(backbone, split, methods, settings=settings, score_test=False, **search):
            if not r.cut_short:
                per_method[r.method].append(r.val_metrics)
    return {m: {"score": statistics.fmean(v["score"] for v in ms), "loss": statistics.fmean(v["loss"] for v in ms)}
            for m, ms in per_method.items() if len(ms) == folds}


@dataclass
class AutoResult:
    """What ``auto`` tried and kept: the chosen method's row and trained model, and why."""

    chosen: MethodRow
    result: object  # the chosen method's DownstreamResult
    rows: list[MethodRow]  # every candidate that ran, with its validation numbers
    skipped: list[str]  # candidates not started (or not usable) within the time budget
    selection: str  # "holdout" or "<k>-fold cross-validation"
    cv_scores: dict[str, dict] = field(default_factory=dict)  # per method: mean validation over folds
    val_images: int = 0

    def metrics(self, row: MethodRow) -> dict[str, float]:
        return self.cv_scores.get(row.method, row.val_metrics)

    def ties(self) -> list[str]:
        """The candidates whose validation accuracy equals the chosen one's (the loss decided among them)."""
        best = self.metrics(self.chosen)["score"]
        return [r.method for r in self.rows if abs(self.metrics(r)["score"] - best) <= SCORE_TIE]

    def explain(self) -> str:
        lines = [f"auto: candidates by validation ({self.selection}, {self.val_images} validation images; "
                 f"rule: {SELECTION_RULE}):"]
        tied = self.ties()
        for r in self.rows:
            metrics = self.metrics(r)
            marks = (["chosen"] if r.method == self.chosen.method else []) + (
                ["tie"] if len(tied) > 1 and r.method in tied else []) + (["cut short by the budget"] if r.cut_short else [])
            lines.append(f"  {r.method:13s} val acc {metrics['score']:.4f}  val loss {metrics['loss']:.4f}  "
                         f"(lr {r.lr:g}, {r.search_seconds:.0f} s){'  <- ' + ', '.join(marks) if marks else ''}")
        if self.skipped:
            lines.append(f"  not tried within the time budget: {', '.join(self.skipped)}")
        if len(tied) > 1:
            step = f"; one image is {1 / self.val_images:.4f}" if self.val_images else ""
            lines.append(f"  {len(tied)} candidates tie on validation accuracy ({', '.join(tied)}): the lower "
                         f"validation loss chose{step}. Treat the choice as uncertain.")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"chosen": self.chosen.method, "rule": SELECTION_RULE, "selection": self.selection,
                "val_images": self.val_images, "ties": self.ties(),
                "candidates": [{"method": r.method, "val": r.val, "val_loss": r.val_loss, "lr": r.lr,
                                "gate_lr": r.gate_lr, "seconds": r.search_seconds, "cut_short": r.cut_short,
                                **({"cv": self.cv_scores[r.method]} if r.method in self.cv_scores else {})}
                               for r in self.rows],
                "skipped": list(self.skipped)}


def run_auto(
    backbone: Backbone,
    data: TaskData,
    *,
    zoo: Zoo | None,
    shots: int | None,
    settings: SearchSettings = SearchSettings(),
    candidates: Sequence[str] | None = None,
    budget_seconds: float | None = None,
    folds: int = 0,
    names: list[str] | None = None,
    reporter=None,
) -> AutoResult:
    """Train the candidates (settings searched on validation), keep the one the rule prefers.

    ``folds`` >= 2: methods are compared by their mean validation numbers over k folds of
    the labelled images (each fold trains on the rest), and the chosen method's model is
    the one trained on the given split. ``budget_seconds`` is a deadline for the whole
    search: a run still training then stops with the best it had, later candidates are
    skipped (linear_probe and scratch run first, so there is always a baseline). Test is
    never scored here. ``reporter`` is told the estimate and the progress.
    """
    started = time.perf_counter()
    deadline = None if budget_seconds is None else started + budget_seconds
    candidates = auto_candidates() if candidates is None else tuple(candidates)
    order = [m for m in ("linear_probe", "scratch") if m in candidates] + [
        m for m in candidates if m not in ("linear_probe", "scratch")]
    if zoo is None:
        order = [m for m in order if not get_method(m).uses_zoo]
    if reporter is not None:
        from vimw.workflows.reporting import estimate_seconds, probe_costs

        costs = probe_costs(MethodContext(backbone, data, zoo=zoo, names=names), settings.base_config(len(data.train)))
        reporter.plan(estimate_seconds(order, costs, settings, len(data.train), len(data.val)), budget_seconds)
    results: dict[str, object] = {}

    def keep(row, result):
        results[row.method] = result

    rows = compare_methods(backbone, data, order, zoo=zoo, shots=shots, settings=settings, on_result=keep,
                           deadline=deadline, names=names, reporter=reporter, score_test=False)
    ran = [r.method for r in rows]
    skipped = [m for m in order if m not in ran]
    cv_scores: dict[str, dict] = {}
    selection = "holdout"
    if folds >= 2:
        cv_scores = kfold_metrics(backbone, data, ran, folds=folds, zoo=zoo, shots=shots, settings=settings,
                                  names=names, deadline=deadline)
        if set(cv_scores) == set(ran):
            selection = f"{folds}-fold cross-validation"
        else:  # the budget ended cross-validation early: every candidate is compared on the split alike
            cv_scores, selection = {}, f"holdout ({folds}-fold cross-validation cut short by the budget)"
    best = rows[best_candidate([cv_scores.get(r.method, r.val_metrics) for r in rows])]
    return AutoResult(best, results[best.method], rows, skipped, selection, cv_scores, len(data.val))


def summarise(rows: Sequence[MethodRow]) -> list[dict]:
    """Mean and spread (population std) of test accuracy per (task, shots, method)."""
    groups: dict[tuple, list[MethodRow]] = {}
    for row in rows:
        groups.setdefault((row.task, row.shots, row.method), []).append(row)
    summary = []
    for (task, shots, method), members in groups.items():
        tests = [m.test for m in members]
        summary.append({
            "task": task, "shots": shots, "method": method, "seeds": len(members),
            "test_mean": statistics.fmean(tests),
            "test_std": statistics.pstdev(tests) if len(tests) > 1 else 0.0,
            "trainable": members[0].trainable,
            "seconds_mean": statistics.fmean(m.seconds for m in members),
        })
    return summary


def format_table(summary: Sequence[dict]) -> str:
    """A markdown table: one row per (task, shots, method)."""
    lines = [
        "| task | shots | method | test acc (mean ± std) | seeds | trainable params | train time (s) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['task']} | {s['shots']} | {s['method']} | {s['test_mean']:.4f} ± {s['test_std']:.4f} | "
            f"{s['seeds']} | {s['trainable']:,} | {s['seconds_mean']:.1f} |"
        )
    return "\n".join(lines)

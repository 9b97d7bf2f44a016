"""Downstream methods side by side, and ``auto``: same task, same shots, same seed, same loop.

Two regimes, one selection rule (``evaluation.selection``: accuracy, ties broken by the lower
loss), never test:

- **true few-shot** (``shots`` given, ``vimw aggregate --shots K``): the K images per class are
  the only labels. Each method's setting is chosen by cross-validation inside them
  (``cross_validate``: leave one image per class out, successive halving over its grid; at 1
  shot its grid's first setting, ordered on development tasks), then it is trained on all of
  them, keeping its last step. ``run_auto`` compares the candidates on the same held-out images,
  trains only the one it keeps, and estimates the zoo's gain over a fresh module
  (``zoo_gain``) with a 95% interval.
- **holdout** (no ``shots``): each method's learning rate is chosen on the validation split
  (``compare_methods``), and ``run_auto`` applies the rule across methods (optionally on k-fold
  cross-validation over train + validation).

Used by ``vimw aggregate``, the README demo and ``benchmarks/downstream*.py``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
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


# -- true few-shot: every choice by cross-validation inside the k labelled images per class ------------
# Leave-one-image-per-class-out folds, at most this many (beyond, a fold holds more images per class):
# every trained candidate runs once per fold.
MAX_FOLDS = 5
# What ``auto`` (and ``best_zoo``) use when nothing can be held out (a class has one image): the
# first of these among the candidates, in the order of their mean over the development tasks at 1
# shot (fmnist-apparel and photos, seeds 100-109: scratch, then zoo_ridge -1.9 [-3.6, -0.2] points,
# then ridge_probe -4.1 [-7.1, -1.1]; benchmarks/results/dev/unseen.md).
ONE_SHOT_ORDER = ("scratch", "zoo_ridge", "ridge_probe")

Fold = tuple[np.ndarray, np.ndarray]  # (rows that train, rows held out) of the labelled images


def few_shot_data(data: TaskData) -> TaskData:
    """``data`` with no validation split: the labelled images are the training split alone."""
    return TaskData(data.spec, data.train, data.train.subset([], name=f"{data.spec.name}/no-val"), data.test)


def few_shot_folds(targets: torch.Tensor, seed: int, max_folds: int = MAX_FOLDS) -> list[Fold]:
    """Stratified folds that hold out one image per class each (``min(k, max_folds)`` folds for
    k images per class; with more, a fold holds several per class). Empty when a class has
    fewer than two images: nothing can be held out then."""
    labels = targets.cpu().numpy()
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if max_folds < 2:
        raise VimwError(f"cross-validation needs at least 2 folds, got {max_folds}")
    if not len(present) or present.min() < 2:
        return []
    folds = int(min(present.min(), max_folds))
    rng = np.random.default_rng([23, int(seed)])
    fold_of = np.empty(len(labels), dtype=np.int64)
    for label in np.flatnonzero(counts):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold_of[members] = np.arange(len(members)) % folds
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(folds)]


def ranked(metrics: Sequence[dict]) -> list[int]:
    """Indices of ``metrics`` best first by the selection rule (earlier candidates win full ties)."""
    left, order = list(range(len(metrics))), []
    while left:
        best = left[best_candidate([metrics[i] for i in left])]
        order.append(best)
        left.remove(best)
    return order


@dataclass
class Halving:
    """What successive halving kept: the chosen candidate and every rung's numbers."""

    chosen: int
    rungs: list[dict]  # {"resource", "candidates", "metrics", "kept"}; the last rung is the full resource


def halving_schedule(count: int, resource: int, eta: int = 2) -> list[tuple[int, int]]:
    """Successive halving's rungs as ``(units of resource, candidates kept)``: each rung scores the
    candidates still in on ``resource * eta**(rung - rungs)`` units (at least one) and keeps the
    best ``1/eta``; the last rung compares the ones left on the whole resource and keeps one."""
    if count < 1 or resource < 1 or eta < 2:
        raise VimwError(f"successive halving needs candidates, a resource and eta >= 2 (got {count}, {resource}, {eta})")
    rungs = 0
    while eta ** rungs < count:
        rungs += 1
    schedule, alive = [], count
    for rung in range(rungs):
        alive = max(1, math.ceil(alive / eta))
        schedule.append((max(1, math.ceil(resource * eta ** (rung - rungs))), alive))
    return schedule + [(resource, 1)]


def successive_halving(count: int, metrics: Callable[[int, int], dict], resource: int, eta: int = 2) -> Halving:
    """Choose among ``count`` candidates, giving the resource (e.g. folds) to the better ones only.

    ``metrics(candidate, r)`` scores a candidate on the first ``r`` units of the resource
    (``{"score", "loss"}``; compute lazily: a unit already scored is reused). The rungs are
    ``halving_schedule``'s; within a rung the selection rule ranks the candidates.
    """
    alive, record = list(range(count)), []
    for units, keep in halving_schedule(count, resource, eta):
        scores = [metrics(i, units) for i in alive]
        kept = sorted(alive[j] for j in ranked(scores)[:keep])
        record.append({"resource": units, "candidates": list(alive), "metrics": scores, "kept": kept})
        alive = kept
    return Halving(alive[0], record)


def held_out_metrics(logits: Sequence[torch.Tensor], folds: Sequence[Fold], targets: torch.Tensor) -> dict:
    """Accuracy and mean cross-entropy over the held-out images of the first ``len(logits)`` folds."""
    held = torch.cat([targets[torch.as_tensor(h)] for _, h in folds[:len(logits)]])
    joined = torch.cat(list(logits)).float()
    return {"score": float((joined.argmax(1) == held).double().mean()),
            "loss": float(torch.nn.functional.cross_entropy(joined, held)), "images": len(held)}


@dataclass
class MethodCV:
    """One method's settings chosen by cross-validation over the labelled images, and its held-out numbers."""

    method: str
    setting: dict
    chosen_by: str  # "k-fold cross-validation" or "fixed (a class has one image)"
    metrics: dict = field(default_factory=dict)  # at the chosen setting, every fold: score, loss, images
    correct: torch.Tensor | None = None  # per held-out image, in fold order: 1 if predicted right
    rungs: list = field(default_factory=list)  # successive halving over the grid
    runs: int = 0  # fits made (a trained method: one training run each)
    seconds: float = 0.0
    folds: int = 0

    def to_dict(self) -> dict:
        return {"method": self.method, "setting": self.setting, "chosen_by": self.chosen_by, "cv": self.metrics,
                "folds": self.folds, "runs": self.runs, "seconds": round(self.seconds, 2),
                "rungs": [{"folds": r["resource"], "settings": [i for i in r["candidates"]],
                           "cv": [{k: round(v, 6) for k, v in m.items()} for m in r["metrics"]], "kept": r["kept"]}
                          for r in self.rungs]}


class BudgetSpent(VimwError):
    """The time budget ran out during a cross-validation (the method is left out)."""


def cross_validate(context: MethodContext, method: str, settings: SearchSettings, folds: Sequence[Fold],
                   grid: Sequence[dict] | None = None, past: Callable[[], bool] | None = None) -> MethodCV:
    """``method``'s setting chosen on ``folds`` of ``context.data.train`` by successive halving over its grid.

    With no folds (a class has one image) the grid's first setting is used, as fixed on the
    development tasks. Every fold trains on its own images only and keeps its last step.
    ``past()`` says the budget is spent: no further fold starts (``BudgetSpent`` is raised).
    """
    grid = tuple(grid or settings.grid(method))
    if not folds:
        return MethodCV(method, dict(grid[0]), "fixed (a class has one image)")
    started = time.perf_counter()
    chosen_method = get_method(method)
    targets = context.data.train.targets
    logits: dict[int, list[torch.Tensor]] = {}

    def config_for(index: int):
        return lambda num_train: settings.base_config(num_train).replace(**grid[index])

    def metrics(index: int, units: int) -> dict:
        done = logits.setdefault(index, [])
        while len(done) < units:
            if past is not None and past():
                raise BudgetSpent(f"{method}: the budget ran out during its cross-validation")
            done.extend(chosen_method.held_out_logits(context, config_for(index), folds[len(done):len(done) + 1]))
        return held_out_metrics(done[:units], folds, targets)

    halving = successive_halving(len(grid), metrics, len(folds))
    best = logits[halving.chosen]
    held = torch.cat([targets[torch.as_tensor(h)] for _, h in folds])
    correct = (torch.cat(best).argmax(1) == held).to(torch.float64)
    runs = sum(len(v) for v in logits.values())
    return MethodCV(method, dict(grid[halving.chosen]), f"{len(folds)}-fold cross-validation",
                    halving.rungs[-1]["metrics"][0], correct, halving.rungs, runs, time.perf_counter() - started,
                    len(folds))


def choose_method(cvs: dict[str, MethodCV], among: Sequence[str],
                  one_shot_order: Sequence[str] = ONE_SHOT_ORDER) -> str | None:
    """The method ``auto``'s rule keeps among ``among``: the best cross-validated one by the selection
    rule, or, when nothing could be held out, the first of ``one_shot_order`` present."""
    pool = [m for m in among if m in cvs]
    if not pool:
        return None
    scored = [m for m in pool if cvs[m].metrics]
    if not scored:
        fixed = [m for m in one_shot_order if m in pool]
        return fixed[0] if fixed else pool[0]
    return scored[best_candidate([cvs[m].metrics for m in scored])]


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean of ``values`` with a two-sided t interval (``low`` = ``high`` = mean when they do not vary)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": n}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


@dataclass
class ZooGain:
    """The zoo's estimated gain over a fresh module: paired over the same held-out images."""

    zoo_method: str
    fresh_method: str
    mean: float  # points of accuracy
    low: float  # 95% interval (paired t over held-out images)
    high: float
    images: int
    folds: int

    def verdict(self) -> str:
        if self.low > 0:
            return "helps"
        return "hurts" if self.high < 0 else "no evidence"

    def sentence(self, chosen: str) -> str:
        numbers = (f"{self.mean:+.1f} points (95% interval {self.low:+.1f} to {self.high:+.1f}; {self.zoo_method} vs "
                   f"{self.fresh_method} on the same {self.images} held-out images, {self.folds}-fold cross-validation)")
        lead = {"helps": "the zoo helps", "hurts": "the zoo hurts this task",
                "no evidence": "no evidence that the zoo helps this task"}[self.verdict()]
        return f"{lead}: {numbers}; using {chosen}"

    def to_dict(self) -> dict:
        return {"zoo_method": self.zoo_method, "fresh_method": self.fresh_method, "mean": round(self.mean, 4),
                "low": round(self.low, 4), "high": round(self.high, 4), "images": self.images, "folds": self.folds,
                "verdict": self.verdict()}


FRESH_MODULE = "scratch"  # what "the zoo helps" is measured against


def paired_gain(cvs: dict[str, MethodCV], method: str | None, reference: str = FRESH_MODULE) -> ZooGain | None:
    """``method`` minus ``reference`` on the same held-out images (points, paired t interval over
    the images); None when either is missing or nothing could be held out."""
    other, ref = cvs.get(method or ""), cvs.get(reference)
    if other is None or ref is None or other.correct is None or ref.correct is None:
        return None
    stats = mean_interval((100.0 * (other.correct - ref.correct)).tolist())
    return ZooGain(other.method, ref.method, stats["mean"], stats["low"], stats["high"], stats["n"], other.folds)


def zoo_gain(cvs: dict[str, MethodCV], zoo_method: str | None) -> ZooGain | None:
    """``zoo_method`` minus a fresh module (``scratch``) on the same held-out images."""
    return paired_gain(cvs, zoo_method)


def choose_auto(cvs: dict[str, MethodCV], among: Sequence[str]) -> str | None:
    """``auto``'s choice: the fresh module unless another candidate beats it with evidence.

    The selection rule (``choose_method``) names the best cross-validated candidate; ``auto``
    keeps it over a fresh module (``scratch``) only when its gain on the same held-out images has
    a 95% interval above zero. With 2-10 held-out images per class the rule's best often wins
    by a tie or one image, and closed-form heads are better calibrated, so they win ties on the
    loss; a user who did not ask for them should get them only on evidence."""
    best = choose_method(cvs, among)
    if best is None or best == FRESH_MODULE or FRESH_MODULE not in among or FRESH_MODULE not in cvs:
        return best
    gain = paired_gain(cvs, best)
    if gain is None:  # nothing held out (1 shot): the order fixed on the development tasks decided
        return best
    return best if gain.low > 0 else FRESH_MODULE


@dataclass
class AutoResult:
    """What ``auto`` tried and kept: the chosen method's row and trained model, and why."""

    chosen: MethodRow
    result: object  # the chosen method's DownstreamResult
    rows: list[MethodRow]  # every candidate that ran, with its validation (or cross-validated) numbers
    skipped: list[str]  # candidates not started (or not usable) within the time budget
    selection: str  # "holdout", "<k>-fold cross-validation" or "fixed (a class has one image)"
    cv_scores: dict[str, dict] = field(default_factory=dict)  # per method: mean validation over folds
    val_images: int = 0  # images the choice was made on (held out in turn under cross-validation)
    cvs: dict[str, MethodCV] = field(default_factory=dict)  # true few-shot: each candidate's cross-validation
    gain: ZooGain | None = None  # the zoo's estimated gain over a fresh module
    best_zoo: str | None = None  # the zoo method the rule keeps among zoo methods only

    def metrics(self, row: MethodRow) -> dict[str, float]:
        return self.cv_scores.get(row.method, row.val_metrics)

    def ties(self) -> list[str]:
        """The candidates whose validation accuracy equals the chosen one's (the loss decided among them)."""
        best = self.metrics(self.chosen)["score"]
        return [r.method for r in self.rows if abs(self.metrics(r)["score"] - best) <= SCORE_TIE]

    def gain_sentence(self) -> str:
        """What ``auto`` says about the zoo: its estimated gain with an interval, or why there is none."""
        chosen = self.chosen.method
        if self.gain is not None:
            return self.gain.sentence(chosen)
        if self.selection.startswith("fixed"):
            return (f"a class has one labelled image, so nothing can be held out to estimate the zoo's gain; "
                    f"using {chosen}, fixed in advance on the development tasks")
        if self.best_zoo is None:
            return f"no zoo method among the candidates; using {chosen}"
        return f"no estimate of the zoo's gain ({FRESH_MODULE} did not run); using {chosen}"

    def explain(self) -> str:
        if self.cvs:
            return self._explain_few_shot()
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
        lines.append(f"  {self.gain_sentence()}")
        return "\n".join(lines)

    def _explain_few_shot(self) -> str:
        if self.selection.startswith("fixed"):
            lines = [f"auto: {self.selection}: nothing can be held out; the choice was fixed on the development "
                     f"tasks (first of {', '.join(ONE_SHOT_ORDER)} among the candidates)"]
        else:
            lines = [f"auto: candidates by {self.selection} over the {self.val_images} labelled images (true few-shot: "
                     f"no validation images; each fold holds out images the fit never saw; rule: {SELECTION_RULE}):"]
        tied = self.ties() if not self.selection.startswith("fixed") else []
        for method, cv in self.cvs.items():
            marks = (["chosen"] if method == self.chosen.method else []) + (
                ["tie"] if len(tied) > 1 and method in tied else [])
            setting = ", ".join(f"{k} {v:g}" for k, v in cv.setting.items()) or "closed form"
            how = f"{setting}; {cv.runs} fits, {cv.seconds:.0f} s"
            numbers = (f"cv acc {cv.metrics['score']:.4f}  cv loss {cv.metrics['loss']:.4f}" if cv.metrics
                       else "not cross-validated")
            lines.append(f"  {method:13s} {numbers}  ({how}){'  <- ' + ', '.join(marks) if marks else ''}")
        if self.skipped:
            lines.append(f"  not tried within the time budget: {', '.join(self.skipped)}")
        if len(tied) > 1:
            lines.append(f"  {len(tied)} candidates tie on cross-validated accuracy ({', '.join(tied)}): the lower "
                         "loss chose. Treat the choice as uncertain.")
        kept_fresh = self.kept_fresh_over()
        if kept_fresh is not None:
            lines.append(f"  {kept_fresh.zoo_method} had the best held-out numbers, but its gain over {FRESH_MODULE} "
                         f"({kept_fresh.mean:+.1f} points, 95% interval {kept_fresh.low:+.1f} to {kept_fresh.high:+.1f}) "
                         f"is not above zero: keeping {FRESH_MODULE}")
        lines.append(f"  {self.gain_sentence()}")
        return "\n".join(lines)

    def reason(self) -> str:
        """Why the chosen method, in a line."""
        if self.selection.startswith("fixed"):
            return "a class has one image, so nothing is held out: the order fixed on development tasks"
        kept = self.kept_fresh_over()
        if kept is not None:
            return f"{self.selection}; {kept.zoo_method} was not better than {FRESH_MODULE} beyond its 95% interval"
        return f"{self.selection}; accuracy ties go to the lower held-out loss"

    def kept_fresh_over(self) -> ZooGain | None:
        """When ``auto`` kept the fresh module over a candidate the selection rule preferred (no
        evidence of a gain): that candidate's gain over it."""
        best = choose_method(self.cvs, list(self.cvs))
        if self.chosen.method != FRESH_MODULE or best in (None, FRESH_MODULE):
            return None
        return paired_gain(self.cvs, best)

    def to_dict(self) -> dict:
        return {"chosen": self.chosen.method, "rule": SELECTION_RULE, "selection": self.selection,
                "val_images": self.val_images, "ties": self.ties(),
                "candidates": [{"method": r.method, "val": r.val, "val_loss": r.val_loss, "lr": r.lr,
                                "gate_lr": r.gate_lr, "seconds": r.search_seconds, "cut_short": r.cut_short,
                                **({"cv": self.cv_scores[r.method]} if r.method in self.cv_scores else {}),
                                **({"cross_validation": self.cvs[r.method].to_dict()} if r.method in self.cvs else {})}
                               for r in self.rows],
                "skipped": list(self.skipped), "best_zoo": self.best_zoo,
                "zoo_gain": None if self.gain is None else self.gain.to_dict(), "zoo_gain_says": self.gain_sentence()}


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
    """Train the candidates, keep the one the rule prefers, and estimate what the zoo gives.

    With ``shots`` (k labelled images per class) the run is true few-shot (``run_auto_few_shot``):
    the validation split is not used, every choice is made by cross-validation inside the k
    images (``folds``: at most this many, default ``MAX_FOLDS``). Without, the candidates'
    settings are searched on the validation split (``folds`` >= 2: methods are compared by
    k-fold cross-validation over train + validation). ``budget_seconds`` is a deadline for
    the whole search: a run still training then stops with the best it had, later
    candidates are skipped (the baselines are listed first, so there is always one; in a
    true few-shot run the closed-form candidates run before the trained ones). Test is
    never scored here. ``reporter`` is told the estimate and the progress.
    """
    candidates = auto_candidates() if candidates is None else tuple(candidates)
    order = [m for m in ("ridge_probe", "linear_probe", "scratch") if m in candidates] + [
        m for m in candidates if m not in ("ridge_probe", "linear_probe", "scratch")]
    if zoo is None:
        order = [m for m in order if not get_method(m).uses_zoo]
    if shots is not None:
        return run_auto_few_shot(backbone, data, zoo=zoo, shots=shots, settings=settings, order=order,
                                 budget_seconds=budget_seconds, max_folds=folds or MAX_FOLDS, names=names,
                                 reporter=reporter)
    started = time.perf_counter()
    deadline = None if budget_seconds is None else started + budget_seconds
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
    zoo_rows = [r for r in rows if get_method(r.method).uses_zoo]
    best_zoo = zoo_rows[best_candidate([cv_scores.get(r.method, r.val_metrics) for r in zoo_rows])].method \
        if zoo_rows else None
    return AutoResult(best, results[best.method], rows, skipped, selection, cv_scores, len(data.val),
                      best_zoo=best_zoo)


def train_chosen(context: MethodContext, cv: MethodCV, settings: SearchSettings):
    """``(config, result)``: ``cv.method`` trained on every labelled image with its chosen setting, keeping
    its last step; its validation numbers are the cross-validated ones (nothing else was held out)."""
    config = settings.base_config(len(context.data.train)).replace(**cv.setting)
    result = get_method(cv.method).train(context, config)
    if cv.metrics:
        result.val_score = cv.metrics["score"]
        result.val_metrics = {"score": cv.metrics["score"], "loss": cv.metrics["loss"]}
    return config, result


def cv_row(data: TaskData, shots: int | None, settings: SearchSettings, cv: MethodCV, config) -> MethodRow:
    """A candidate's row in a true few-shot search: its cross-validated numbers as its validation ones."""
    return MethodRow(task=data.spec.name, shots=shots, seed=settings.seed, method=cv.method, lr=config.lr,
                     gate_lr=config.gate_lr, val=cv.metrics.get("score", math.nan), test=math.nan, trainable=0,
                     seconds=0.0, epochs=config.epochs, val_loss=cv.metrics.get("loss", math.nan),
                     augment=config.augment, selection=cv.chosen_by, candidates=[cv.to_dict()],
                     search_seconds=round(cv.seconds, 2))


def run_auto_few_shot(backbone: Backbone, data: TaskData, *, zoo: Zoo | None, shots: int, settings: SearchSettings,
                      order: Sequence[str], budget_seconds: float | None, max_folds: int = MAX_FOLDS,
                      names: list[str] | None = None, reporter=None) -> AutoResult:
    """``auto`` on ``shots`` labelled images per class and nothing else (true few-shot).

    Each candidate's setting is chosen by cross-validation (``cross_validate``: leave one
    image per class out, successive halving over its grid); the candidates are compared on
    the same held-out images by the selection rule; only the chosen one is then trained on
    every labelled image. A class with one image leaves nothing to hold out: the choice is
    then ``ONE_SHOT_ORDER``'s, fixed on the development tasks. The zoo's gain over a fresh
    module is estimated on the held-out images (``zoo_gain``). Candidates not started by the
    ``budget_seconds`` deadline are skipped (the first always runs).
    """
    started = time.perf_counter()
    deadline = None if budget_seconds is None else started + budget_seconds

    def past() -> bool:
        return deadline is not None and time.perf_counter() > deadline

    context, folds = few_shot_context(backbone, data, zoo, names, settings.seed, max_folds, reporter, past=past)
    labelled = context.data
    if reporter is not None:
        reporter.plan(few_shot_estimate(context, order, settings, folds), budget_seconds)
    cvs: dict[str, MethodCV] = {}
    skipped: list[str] = []
    # Closed-form candidates first: they cost seconds, so a budget cut only ever leaves out a trained one.
    # The listed order still breaks ties (choose_method below reads ``order``).
    for method in sorted(order, key=lambda m: not get_method(m).closed_form):
        if cvs and past():
            skipped.append(method)
            if reporter is not None:
                reporter.skipped(method, "not started: the budget ran out")
            continue
        if reporter is not None:
            reporter.cv_started(method, len(settings.grid(method)), len(folds))
        try:
            cvs[method] = cross_validate(context, method, settings, folds, past=past)
        except BudgetSpent:
            if cvs:
                skipped.append(method)
                if reporter is not None:
                    reporter.skipped(method, "cross-validation cut short by the budget: left out")
                continue
            # The first candidate always yields a model: its grid's first setting, as at 1 shot.
            cvs[method] = MethodCV(method, dict(settings.grid(method)[0]), "fixed (cross-validation cut short by the "
                                                                            "budget)")
        if reporter is not None:
            reporter.cv_finished(cvs[method])
    cvs = {m: cvs[m] for m in order if m in cvs}  # reported in the listed order
    chosen = choose_auto(cvs, order)
    best_zoo = choose_method(cvs, [m for m in order if get_method(m).uses_zoo])
    config, result = train_chosen(context, cvs[chosen], settings)
    if reporter is not None and result.fit.stopped:
        reporter.skipped(chosen, "its final fit was cut short by the budget (its last step is kept)")
    rows = [cv_row(labelled, shots, settings, cv, settings.base_config(len(labelled.train)).replace(**cv.setting))
            for cv in cvs.values()]
    best = replace(next(r for r in rows if r.method == chosen), trainable=result.trainable,
                   seconds=round(result.seconds, 2), cut_short=result.fit.stopped)
    selection = cvs[chosen].chosen_by
    return AutoResult(best, result, rows, skipped, selection, {m: cv.metrics for m, cv in cvs.items() if cv.metrics},
                      len(labelled.train), cvs, zoo_gain(cvs, best_zoo), best_zoo)


def few_shot_context(backbone: Backbone, data: TaskData, zoo: Zoo | None, names: list[str] | None, seed: int,
                     max_folds: int = MAX_FOLDS, reporter=None, top_k: int = 2,
                     past: Callable[[], bool] | None = None) -> tuple[MethodContext, list[Fold]]:
    """The context of a true few-shot search (the labelled images only) and its folds; a reporter
    hears a heartbeat from every training step, and a run stops there once ``past()`` says so."""
    labelled = few_shot_data(data)
    context = MethodContext(backbone, labelled, zoo=zoo, names=names, top_k=top_k)

    def stop() -> bool:
        if reporter is not None:
            reporter.tick()
        return past is not None and past()

    context.hooks = FitHooks(None, stop)
    return context, few_shot_folds(labelled.train.targets, seed, max_folds)


def select_and_train(backbone: Backbone, data: TaskData, method: str, *, zoo: Zoo | None, names: list[str] | None,
                     settings: SearchSettings, max_folds: int = MAX_FOLDS, top_k: int = 2, reporter=None):
    """One method, true few-shot: its setting by cross-validation inside the shots, then trained on all of
    them. ``(config, result, record)``, as ``vimw aggregate --method NAME --shots K`` runs it."""
    context, folds = few_shot_context(backbone, data, zoo, names, settings.seed, max_folds, reporter, top_k)
    if reporter is not None:
        reporter.cv_started(method, len(settings.grid(method)), len(folds))
    cv = cross_validate(context, method, settings, folds)
    if reporter is not None:
        reporter.cv_finished(cv)
    config, result = train_chosen(context, cv, settings)
    return config, result, {"rule": SELECTION_RULE, "selection": cv.chosen_by, "cross_validation": cv.to_dict()}


def few_shot_estimate(context: MethodContext, order: Sequence[str], settings: SearchSettings,
                      folds: Sequence[Fold]) -> dict[str, float]:
    """Each candidate's estimated seconds: its cross-validation fits (successive halving's worst case) and
    a final fit (counted for every candidate: which one is kept is not known yet)."""
    from vimw.training.headfit import DEFAULT_VIEWS
    from vimw.workflows.reporting import probe_costs

    n = len(context.data.train)
    base = settings.base_config(n)
    costs = probe_costs(context, base)
    steps = base.epochs * max(1, math.ceil(n / base.batch_size))
    out = {}
    for method in order:
        chosen = get_method(method)
        closed = chosen.closed_form  # features once, every fold refits in closed form
        one = costs.run_seconds(chosen.trains, steps, n, 0, 1 if closed else DEFAULT_VIEWS)
        fits = 0 if closed or not folds else halving_fits(len(settings.grid(method)), len(folds))
        out[method] = one * (1 + fits)
    return out


def halving_fits(count: int, resource: int, eta: int = 2) -> int:
    """How many (candidate, unit) evaluations ``successive_halving`` makes at most."""
    fits, alive = 0, count
    for units, keep in halving_schedule(count, resource, eta):
        fits += (alive - keep) * units  # dropped here, having reached ``units``
        alive = keep
    return fits + resource


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

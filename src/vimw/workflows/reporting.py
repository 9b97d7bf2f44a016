"""What a search over methods says while it works: an estimate first, then progress, then each result.

On a terminal each training run gets a progress bar (its method, setting, epoch and best
validation accuracy so far); elsewhere (a log file, CI) plain lines, one when a run starts
and ends and one at least every ``heartbeat`` seconds while it trains, so a silent process
is never mistaken for a hung one.

The estimate comes from timing one training step through the backbone and one feature pass
before anything trains; each method declares what its steps run through
(``DownstreamMethod.trains``). It is a rough guide, and it is refreshed after every method
from the time the finished ones really took.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vimw.training.headfit import DEFAULT_VIEWS


@dataclass(frozen=True)
class StepCosts:
    """Seconds of one training step through the backbone with one module, and of one feature pass, per image."""

    module_step: float
    feature: float
    num_modules: int  # the zoo's modules on this backbone (a "zoo" step runs all of them)

    def run_seconds(self, trains: str, steps: int, num_train: int, num_val: int, views: int) -> float:
        """One training run of a method whose steps run through ``trains`` (``DownstreamMethod.trains``)."""
        if trains == "head":  # features once per image and view, then head steps cost ~nothing
            return (views * num_train + num_val) * self.feature
        factor = {"zoo": 1.0 + 0.35 * self.num_modules, "backbone": 2.0}.get(trains, 1.0)
        return steps * self.module_step * factor + 2 * num_val * self.feature * factor


def probe_costs(context, config) -> StepCosts:
    """Time one training step of a fresh module and one feature pass on this task's images."""
    from vimw.evaluation import task_loss
    from vimw.methods import get_method
    from vimw.training.headfit import frozen_features

    data = context.data
    batch = data.train.images[: config.batch_size]
    model, _ = get_method("scratch").build(context, config)
    model.to(context.device()).train()
    pixels = model.backbone.preprocess(batch.to(context.device()))
    targets = data.train.targets[: len(batch)].to(pixels.device)

    def timed(work) -> float:  # the second of two calls: the first pays one-off set-up costs
        times = []
        for _ in range(2):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return times[-1]

    module_step = timed(lambda: task_loss(model(pixels), targets).backward())
    feature = timed(lambda: frozen_features(model, batch)) / max(1, len(batch))
    names = context.zoo_names("auto") if context.zoo is not None and len(context.zoo) else []
    return StepCosts(module_step, feature, len(names))


def estimate_seconds(methods: Sequence[str], costs: StepCosts, settings, num_train: int, num_val: int) -> dict:
    """Each method's estimated seconds for its whole grid (``settings``: a ``SearchSettings``)."""
    from vimw.methods import get_method

    base = settings.base_config(num_train)
    steps = base.epochs * max(1, math.ceil(num_train / base.batch_size))
    views = DEFAULT_VIEWS if base.augment else 1
    out = {}
    for name in methods:
        method = get_method(name)
        one = costs.run_seconds(method.trains, steps, num_train, num_val, views)
        repeats = costs.num_modules if name == "single" else 1
        out[name] = one * repeats * len(settings.grid(name))
    return out


def duration(seconds: float) -> str:
    """Seconds for people: ``45 s``, ``3 min 20 s``, ``1 h 5 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class SearchReporter:
    """Tells a person what a search is doing: plain lines, or progress bars on a terminal."""

    def __init__(self, write: Callable[[str], None] = print, *, terminal: bool | None = None,
                 heartbeat: float = 20.0) -> None:
        from vimw.training.progress import progress_enabled

        self.write = write
        self.terminal = progress_enabled(terminal)
        self.heartbeat = heartbeat
        self.started = time.perf_counter()
        self.estimates: dict[str, float] = {}
        self.spent: dict[str, float] = {}
        self._bar = None
        self._last = 0.0
        self._best = math.nan
        self._epoch = 0
        self._label = ""
        self._cv: tuple[str, float] | None = None  # (method, start) while a cross-validation runs
        self._steps = 0

    def elapsed(self) -> str:
        return duration(time.perf_counter() - self.started)

    def plan(self, estimates: dict[str, float], budget: float | None) -> None:
        self.estimates = dict(estimates)
        total = sum(estimates.values())
        cap = "" if budget is None else f"; the budget stops it at {duration(budget)}"
        self.write(f"auto: {len(estimates)} candidates ({', '.join(estimates)}), about {duration(total)} in all "
                   f"(a rough estimate from timing one step{cap})")

    def run_started(self, method: str, index: int, count: int, config) -> None:
        self._cv = None
        self._label = f"{method} [{index + 1}/{count}] lr {config.lr:g}" + (
            "" if config.gate_lr is None else f", gate lr {config.gate_lr:g}")
        self._best, self._last, self._epoch = math.nan, time.perf_counter(), 0
        if self.terminal:
            from vimw.training.progress import progress_bar

            self._bar = progress_bar(config.epochs, self._label, True, unit="epoch")
        else:
            self.write(f"  [{self.elapsed()}] {self._label}: training, {config.epochs} epochs")

    def epoch(self, epoch: int, record: dict) -> None:
        score = record.get("val_score", math.nan)
        if not record.get("in_warmup") and not score <= self._best:
            self._best = score
        self._epoch = epoch
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(val=f"{self._best:.4f}")
        self.tick()

    def tick(self) -> None:
        """Called after every training step: a plain line when ``heartbeat`` seconds passed silently."""
        self._steps += 1
        if self._bar is None and time.perf_counter() - self._last >= self.heartbeat:
            self._last = time.perf_counter()
            self.write(f"  [{self.elapsed()}] {self._label}: {self._cv_progress() if self._cv else self._run_progress()}")

    def _run_progress(self) -> str:
        best = "none past the warm-up yet" if math.isnan(self._best) else f"{self._best:.4f}"
        return f"epoch {self._epoch}, best validation accuracy so far {best}"

    def _cv_progress(self) -> str:
        """Cross-validation fits keep their last step (no epoch to report): steps done and time against the plan."""
        method, started = self._cv
        spent = time.perf_counter() - started
        planned = self.estimates.get(method)
        if planned is None:
            where = f"{duration(spent)} in"
        elif spent <= planned:
            where = f"about {duration(planned - spent)} of its estimated {duration(planned)} left"
        else:
            where = f"{duration(spent)} in, past its rough estimate of {duration(planned)}"
        return f"{self._steps} training steps so far, {where}"

    def run_finished(self, result, stopped: bool) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        cut = " (cut short by the budget)" if stopped else ""
        self.write(f"  [{self.elapsed()}] {self._label}: val {result.val_score:.4f}, loss "
                   f"{result.val_metrics.get('loss', math.nan):.4f}{cut}")

    def method_finished(self, method: str, seconds: float, remaining: Sequence[str]) -> None:
        self.spent[method] = seconds
        done = [m for m in self.spent if m in self.estimates]
        ratio = sum(self.spent[m] for m in done) / max(1e-9, sum(self.estimates[m] for m in done))
        left = ratio * sum(self.estimates.get(m, 0.0) for m in remaining)
        tail = f"; about {duration(left)} left" if remaining else ""
        self.write(f"  {method} done in {duration(seconds)}{tail}")

    def skipped(self, method: str, why: str) -> None:
        self.write(f"  {method}: {why}")

    def cv_started(self, method: str, settings: int, folds: int) -> None:
        """A method's cross-validation begins (true few-shot): its settings, fold by fold."""
        self._label, self._best, self._last, self._epoch = f"{method} (cross-validation)", math.nan, time.perf_counter(), 0
        self._cv, self._steps = (method, time.perf_counter()), 0
        what = f"{settings} setting(s) over {folds} folds by successive halving" if folds else "no folds (fixed setting)"
        self.write(f"  [{self.elapsed()}] {method}: {what}")

    def cv_finished(self, cv) -> None:
        """A method's cross-validated numbers (``compare.MethodCV``)."""
        self.spent[cv.method] = cv.seconds
        numbers = (f"cv acc {cv.metrics['score']:.4f}, loss {cv.metrics['loss']:.4f} on {cv.metrics['images']} held-out "
                   "images" if cv.metrics else cv.chosen_by)
        self.write(f"  [{self.elapsed()}] {cv.method}: {numbers} ({cv.runs} fits, {duration(cv.seconds)})")


__all__ = ["SearchReporter", "StepCosts", "duration", "estimate_seconds", "probe_costs"]

"""Aggregating a zoo for a downstream task, and writing the downstream model: ``vimw aggregate``.

:class:`AggregateSettings` holds every default of an aggregation run; the command line, a
recipe's ``aggregate`` section, the demo and the benchmarks all read it.
:func:`aggregate` loads the zoo, its backbone and the task, trains the method (or lets
``auto`` choose one), scores it on test and writes the model with :func:`save_model`, the
one place a downstream model's manifest is composed.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vimw.errors import VimwError
from vimw.workflows.compare import AutoResult, SearchSettings

AUTO = "auto"


@dataclass(frozen=True)
class AggregateSettings:
    """One aggregation run: which zoo, task and method; how every candidate trains (``search``).

    ``method`` ``auto`` trains the candidates within ``budget`` seconds and keeps the best on
    validation (or by ``cv``-fold cross-validation over the labelled images when ``cv`` >= 2).
    With ``shots`` the run is true few-shot: the k images per class are the only labels used,
    and every choice is made by cross-validation inside them (``cv``: at most that many folds).
    """

    zoo: str | None = None
    task: str | None = None
    out: str | None = None
    shots: int | None = None  # labelled training images per class (None: all)
    method: str = AUTO
    top_k: int = 2  # modules kept per site by ``topk``
    budget: float | None = 900.0  # auto: seconds for the whole run (a deadline, not a start cut-off)
    cv: int = 0
    modules: tuple[str, ...] | None = None  # zoo modules to use (None: every module on the backbone)
    image_size: int | None = None  # None: the zoo's
    backbone: str | None = None  # None: what the zoo was built on
    search: SearchSettings = field(default_factory=SearchSettings)

    def __post_init__(self) -> None:
        from vimw.methods import get_method

        if self.method != AUTO:
            get_method(self.method)
        if self.shots is not None and self.shots < 1:
            raise VimwError(f"shots must be >= 1, got {self.shots}")
        if self.top_k < 1:
            raise VimwError(f"top_k must be >= 1, got {self.top_k}")
        if self.budget is not None and not self.budget > 0:
            raise VimwError(f"budget must be a positive number of seconds, got {self.budget}")
        if self.cv == 1 or self.cv < 0:
            raise VimwError(f"cv must be 0 (a validation split) or at least 2 folds, got {self.cv}")
        if self.image_size is not None and self.image_size < 0:
            raise VimwError(f"image_size must be >= 0 (0: the backbone's native), got {self.image_size}")

    def check_flags(self) -> None:
        """Refuse settings the chosen method would ignore, naming them."""
        from vimw.methods import get_method

        if self.top_k != AggregateSettings.top_k and self.method != "topk":
            raise VimwError(f"top_k applies to --method topk only, not to {self.method!r}")

        if self.method == AUTO:
            fixed = [k for k in ("lr", "gate_lr") if getattr(self.search, k) is not None]
            if fixed:
                raise VimwError(f"auto searches each candidate's own learning rates; {', '.join(fixed)} applies to "
                                "one method: give it with --method NAME")
            return
        method = get_method(self.method)
        if not method.saved:
            raise VimwError(f"method {self.method!r} ({method.summary}) cannot be saved as a downstream model")
        if self.cv:
            raise VimwError("cv chooses among methods: it applies to --method auto only")
        grid = method.grid
        if self.search.gate_lr is not None and not any("gate_lr" in s for s in grid):
            raise VimwError(f"method {self.method!r} has no learned gates: gate_lr does not apply to it")
        if self.search.lr is not None and method.closed_form:
            raise VimwError(f"method {self.method!r} fits its head in closed form: lr does not apply to it")

    def to_section(self) -> dict[str, Any]:
        """These settings as a recipe's ``aggregate`` section (``train``: the search settings)."""
        section = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "search"}
        section["modules"] = list(self.modules) if self.modules is not None else None
        return {**section, "train": self.search.to_dict()}

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> "AggregateSettings":
        """Settings from a recipe's ``aggregate`` section (missing keys keep their defaults)."""
        known = {f.name for f in fields(cls)} - {"search"}
        values = {k: v for k, v in section.items() if k in known}
        if values.get("modules") is not None:
            values["modules"] = tuple(values["modules"])
        search = SearchSettings(**{**SearchSettings().to_dict(), **(section.get("train") or {})})
        return cls(**values, search=search)

    def replace(self, **changes) -> "AggregateSettings":
        return replace(self, **changes)


@dataclass
class AggregateOutcome:
    """What an aggregation run made: the trained result, its test scores and where it was written."""

    method: str
    result: Any  # vimw.methods.DownstreamResult
    test: dict[str, float]
    data: Any  # vimw.data.TaskData
    manifest: dict
    out: Path | None
    auto: AutoResult | None = None
    zoo_overlaps: dict[str, list[str]] = field(default_factory=dict)  # module -> what it shares with the task


def zoo_overlap_notes(zoo, data, names: list[str] | None) -> dict[str, list[str]]:
    """The zoo modules in use whose training data overlaps the task, with why (from their manifests).

    A task whose images cannot be traced gets no notes (nothing can be said either way).
    """
    from vimw.errors import DataError
    from vimw.zoo.overlap import module_tasks, zoo_overlaps

    used = set(names or zoo.names())
    try:
        found = zoo_overlaps({n: t for n, t in module_tasks(zoo).items() if n in used}, data.spec)
    except DataError:
        return {}
    return {name: [str(r) for r in reasons] for name, reasons in found.items() if reasons}


def save_model(out: str | os.PathLike, result, data, config, *, shots: int | None, test: dict[str, float],
               search: dict | None = None, title: str | None = None) -> dict:
    """Write a trained downstream model (weights, manifest, and the gate heatmap when it has gates).

    The one place a downstream model's manifest is composed, whoever saves it (``vimw
    aggregate``, the demo, the Python API). ``search`` records how the method and its settings
    were chosen (every candidate's validation numbers).
    """
    from vimw.aggregation import ZooAggregate, save_downstream
    from vimw.io import unmeasured_as_null

    manifest = {
        "method": result.method,
        **result.info,
        "task": {**data.spec.to_dict(), "shots": shots, "seed": config.seed},
        "class_names": list(data.class_names),
        "metrics": {"val_score": result.val_score, "val_loss": result.val_metrics.get("loss"),
                    "val_images": len(data.val), **{f"test_{k}": v for k, v in test.items()},
                    "test_images": len(data.test)},
        "training": {**config.to_dict(), "seconds": round(result.seconds, 2), "trainable": result.trainable},
        "search": search or {},
    }
    # Nothing held out (1 shot, or a cross-validation the budget cut) leaves validation numbers unmeasured: null.
    payload = save_downstream(out, result.model, unmeasured_as_null(manifest))
    if isinstance(result.model.plugin, ZooAggregate):
        from vimw.aggregation.plot import plot_gates
        from vimw.io.names import GATES_PLOT_FILE

        plot_gates(result.model.plugin, Path(out) / GATES_PLOT_FILE,
                   title=title or f"{result.method} gates on {data.spec.name}")
    return payload


def aggregate(settings: AggregateSettings, *, recipe: dict | None = None, reporter=None,
              overwrite: bool = False, skip_bad: bool = False) -> AggregateOutcome:
    """Train ``settings.method`` (or let ``auto`` choose) on the task over the zoo; write the model.

    ``recipe`` (the effective recipe, if the run came from one) is written next to the model
    as ``recipe.json`` together with how the zoo was built. An existing model is replaced only
    with ``overwrite``; a second run writing the same directory at the same time is refused.
    ``reporter`` (a ``workflows.reporting.SearchReporter``) is told the estimate and progress.
    ``skip_bad``: an image folder's unreadable files are left out instead of stopping the run.
    """
    from vimw.io import file_lock
    from vimw.io.names import MODEL_LOCK_FILE

    missing = [f"--{key}" for key in ("zoo", "task", "out") if not getattr(settings, key)]
    if missing:
        raise VimwError(f"vimw aggregate needs {', '.join(missing)} (or a --recipe whose 'aggregate' section sets them)")
    settings.check_flags()
    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise VimwError(f"--out {out} is a file; a downstream model is a directory")
    check_zoo_dir(settings.zoo)
    created = not out.exists()
    try:
        with file_lock(out / MODEL_LOCK_FILE, wait=False, what=str(out)):
            if not overwrite and existing_model(out):
                raise VimwError(f"{out} already holds a model; pass --overwrite to replace it, or choose another --out")
            return _aggregate(settings, recipe, reporter, skip_bad)
    except BaseException:
        if created and out.is_dir() and not existing_model(out):  # leave nothing behind a failed first run
            shutil.rmtree(out, ignore_errors=True)
        raise


def existing_model(directory: Path) -> bool:
    """Whether ``directory`` holds anything but its own lock file."""
    from vimw.io.names import MODEL_LOCK_FILE

    return directory.is_dir() and any(p.name != MODEL_LOCK_FILE for p in directory.iterdir())


def _aggregate(settings: AggregateSettings, recipe: dict | None, reporter, skip_bad: bool = False) -> AggregateOutcome:
    from vimw.evaluation import evaluate

    started = time.perf_counter()
    zoo, backbone = open_zoo(settings)
    data = load_data(settings, skip_bad)
    if settings.shots is not None:  # true few-shot: the k images per class are all the labels used
        from vimw.workflows.compare import few_shot_data

        data = few_shot_data(data)
    search = settings.search
    names = list(settings.modules) if settings.modules else None
    auto = None
    if settings.method == AUTO:
        from vimw.workflows.compare import run_auto

        # The budget is the whole run's: loading is spent, and scoring and saving need a few seconds.
        left = None if settings.budget is None else max(1.0, 0.95 * settings.budget - (time.perf_counter() - started))
        auto = run_auto(backbone, data, zoo=zoo, shots=settings.shots, settings=search, names=names,
                        budget_seconds=left, folds=settings.cv, reporter=reporter)
        result, record = auto.result, auto.to_dict()
        config = search.base_config(len(data.train)).replace(lr=auto.chosen.lr, gate_lr=auto.chosen.gate_lr)
    else:
        config, result, record = search_one(settings, backbone, data, zoo, names, reporter)
    test = evaluate(result.model, data.test, config.eval_batch_size)
    overlaps = zoo_overlap_notes(zoo, data, names)
    manifest = save_model(settings.out, result, data, config, shots=settings.shots, test=test,
                          search={**record, "zoo_overlaps": overlaps})
    # The recipe records the backbone the run found, so it reproduces the run wherever it is read.
    recorded = backbone.record()
    write_recipe(settings.replace(backbone=recorded.source), zoo.root, recipe)
    return AggregateOutcome(result.method, result, test, data, manifest, Path(settings.out), auto, overlaps)


def search_one(settings: AggregateSettings, backbone, data, zoo, names, reporter):
    """One method's settings searched on validation (with ``shots``: by cross-validation inside them):
    ``(config, result, record of every setting)``."""
    from vimw.evaluation.selection import SELECTION_RULE, best_candidate
    from vimw.methods import MethodContext
    from vimw.workflows.compare import MAX_FOLDS, search_settings, select_and_train

    if settings.shots is not None:
        return select_and_train(backbone, data, settings.method, zoo=zoo, names=names, settings=settings.search,
                                max_folds=settings.cv or MAX_FOLDS, top_k=settings.top_k, reporter=reporter)

    context = MethodContext(backbone, data, zoo=zoo, names=names, top_k=settings.top_k)
    base = settings.search.base_config(len(data.train))
    tried, _ = search_settings(context, settings.method, base, settings.search.grid(settings.method),
                               lambda: False, reporter, first=True)
    config, result = tried[best_candidate([r.val_metrics for _, r in tried])]
    record = {"rule": SELECTION_RULE, "selection": "holdout",
              "candidates": [{"lr": c.lr, "gate_lr": c.gate_lr, "val": r.val_score,
                              "val_loss": r.val_metrics.get("loss"), "best_epoch": r.fit.best_epoch}
                             for c, r in tried]}
    return config, result, record


def open_zoo(settings: AggregateSettings):
    """The zoo (it must exist and hold modules) and the backbone its modules were trained on."""
    from vimw.backbones import create_backbone
    from vimw.zoo import Zoo
    from vimw.zoo.recipe import backbone_source

    root = check_zoo_dir(settings.zoo)
    zoo = Zoo(root)
    rows = zoo.list()
    if not rows:
        raise VimwError(f"the zoo {root} is empty; build one with 'vimw zoo build --zoo {root}'")
    first = zoo.manifest((list(settings.modules) if settings.modules else [rows[0][0]])[0])
    source = settings.backbone or backbone_source(zoo.root, first.backbone)
    size = settings.image_size if settings.image_size is not None else first.backbone.get("image_size")
    return zoo, create_backbone(source, image_size=size or None)


def check_zoo_dir(path: str | os.PathLike) -> Path:
    """``path`` as a zoo directory that exists (a file or a missing directory is named as such)."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise VimwError(f"--zoo {root} is a file; a zoo is a directory (made by 'vimw zoo build')")
    if not root.is_dir():
        raise VimwError(f"no zoo at {root}: the directory does not exist")
    return root


def load_data(settings: AggregateSettings, skip_bad: bool = False):
    """The task's splits for this run (``load_task`` refuses a classifier with fewer than two classes)."""
    from vimw.data import load_task

    return load_task(settings.task, shots=settings.shots, seed=settings.search.seed, skip_bad=skip_bad)


def evaluate_saved(model_dir: str | os.PathLike, *, task: str | None = None, zoo: str | os.PathLike | None = None,
                   skip_bad: bool = False):
    """A saved model's test metrics on its task (or ``task``): ``(metrics, manifest, data)``."""
    from vimw.aggregation import load_downstream
    from vimw.data import load_task
    from vimw.errors import DataError
    from vimw.evaluation import evaluate

    model, manifest = load_downstream(model_dir, zoo_dir=zoo)
    recorded = manifest.get("task", {})
    data = load_task(task or recorded.get("name"), seed=recorded.get("seed", 0), skip_bad=skip_bad)
    if data.num_classes != model.head_config.num_classes:
        raise DataError(f"task {data.spec.name!r} has {data.num_classes} classes but the model predicts "
                        f"{model.head_config.num_classes}")
    return evaluate(model, data.test), manifest, data


def write_recipe(settings: AggregateSettings, zoo_root: Path, recipe: dict | None) -> None:
    """``recipe.json`` beside the model: these settings and how the zoo was built."""
    from vimw.zoo.recipe import read_recipe_file, write_recipe_file

    effective = dict(recipe or {})
    effective["aggregate"] = settings.to_section()
    zoo_recipe = read_recipe_file(zoo_root)
    if zoo_recipe and zoo_recipe.get("zoo"):
        effective["zoo"] = zoo_recipe["zoo"]
    write_recipe_file(settings.out, effective)


__all__ = ["AUTO", "AggregateOutcome", "AggregateSettings", "aggregate", "evaluate_saved", "save_model"]

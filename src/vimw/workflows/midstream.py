"""Midstream training: one fresh module + a task head on a frozen backbone, stored in a zoo.

``train_module`` trains and adds one module; ``build_zoo`` runs a recipe (a list of
``MidstreamRecipe``), skipping modules the zoo already holds, so an interrupted build
picks up where it stopped. Modules are independent, so a build is embarrassingly
parallel: ``jobs=N`` trains N modules at once in separate processes, and under torchrun
each rank trains its share of the modules (one module per rank at a time, no gradient
exchange). Every module lands through the zoo's locked, atomic ``Zoo.add``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vimw.backbones import Backbone, create_backbone
from vimw.data import ImageSet, TaskData, load_task
from vimw.errors import VimwError
from vimw.io.names import TRAINING_LOG_FILE, ZOO_WORK_DIR
from vimw.modules import DEFAULT_MODULE_KIND, ModuleSet, config_from_dict
from vimw.training import TaskModel, TrainConfig, evaluate, fit, head_config_for
from vimw.training import distributed as dist_utils
from vimw.zoo.manifest import ModuleManifest, check_module_name
from vimw.zoo.recipe import record_modules
from vimw.zoo.store import Zoo

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_IMAGE_SIZE = 64


@dataclass(frozen=True)
class MidstreamRecipe:
    """One module of a zoo build: which task, which module, how to train it."""

    name: str
    task: str
    kind: str = DEFAULT_MODULE_KIND
    module: dict = field(default_factory=dict)  # module config overrides (hidden_dim, rank...)
    train: TrainConfig = field(default_factory=TrainConfig)
    max_train: int | None = None
    max_test: int | None = None

    def module_config(self):
        """The module config this recipe builds (kind plus overrides)."""
        return config_from_dict({"kind": self.kind, **self.module})

    def to_dict(self) -> dict:
        """This module as a recipe's ``zoo.modules`` entry (every training setting)."""
        return {**asdict(self), "train": self.train.to_dict()}


def _recipe(name: str, task: str, epochs: int, lr: float, max_train: int | None, max_test: int | None = None):
    return MidstreamRecipe(name, task, train=TrainConfig(epochs=epochs, lr=lr), max_train=max_train, max_test=max_test)


# The default (benchmark) zoo on EfficientNet-Lite0 at 64 px: ten modules, diverse by
# design. Classification of three domains and label sets (clothing, handwritten digits,
# natural photos); dense tasks (digit masks, edges, denoising); self-supervised tasks
# (rotation, jigsaw, instance discrimination); and distillation of the backbone's own
# ImageNet prediction at its native 224 px. No task sees an image of the downstream
# benchmark's held-out data: Fashion-MNIST only from its training file and only its
# apparel classes (no sandal, sneaker, ankle boot or bag), no scikit-learn 8x8 digit,
# no LFW face (tests/test_midstream_rule.py checks it). Sizes keep the build near
# 15 minutes of one CPU core (about half that with ``jobs=2`` on two cores).
DEFAULT_RECIPE: tuple[MidstreamRecipe, ...] = (
    _recipe("fmnist-apparel", "apparel", 3, 2e-3, 3000, 1000),
    _recipe("mnist-digits", "mnist", 3, 2e-3, 3000),
    _recipe("photos", "photos", 3, 2e-3, None),
    _recipe("mnist-segmentation", "mnist-segmentation", 3, 3e-3, 1500, 500),
    _recipe("photos-edges", "photos-edges", 3, 3e-3, 1500, 500),
    _recipe("photos-denoise", "photos-denoise", 3, 3e-3, 1500, 500),
    _recipe("fmnist-rotation", "fmnist-rotation", 3, 2e-3, 3000, 1000),
    _recipe("fmnist-jigsaw", "fmnist-jigsaw", 3, 2e-3, 3000, 1000),
    _recipe("photos-instance", "photos-instance", 3, 3e-3, None),
    _recipe("fmnist-distill", "fmnist-distill", 4, 3e-3, 1000, 250),
)
# The demo's zoo: a subset of the default one (one classification, one dense, one
# self-supervised and the distillation module), to keep the demo short.
DEMO_MODULES = ("fmnist-apparel", "mnist-segmentation", "fmnist-rotation", "fmnist-distill")
DEMO_RECIPE: tuple[MidstreamRecipe, ...] = tuple(r for r in DEFAULT_RECIPE if r.name in DEMO_MODULES)


def native_size(backbone: Backbone) -> int:
    """The input size a registered backbone was pretrained at."""
    from vimw.backbones import list_backbones

    for entry in list_backbones():
        if entry.name == backbone.arch:
            return entry.default_size
    raise VimwError(f"backbone {backbone.arch!r}: its native resolution is unknown, so it cannot teach itself")


@torch.no_grad()
def teacher_labels(backbone: Backbone, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The backbone's own ImageNet top-1 for ``images`` at its native resolution (no module plugged)."""
    if not backbone.has_classifier:
        raise VimwError(f"backbone {backbone.arch!r} has no ImageNet classifier to distil from")
    preprocess = backbone.preprocess.with_size(native_size(backbone))
    device = next(backbone.parameters()).device
    labels = [
        backbone.classify(backbone.forward_features(preprocess(images[i : i + batch_size].to(device)))).argmax(1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)


def label_with_teacher(data: TaskData, backbone: Backbone) -> TaskData:
    """A ``distill`` task's images labelled with the backbone's native-resolution ImageNet top-1."""
    names = tuple(f"{i:03d} {n}" for i, n in enumerate(backbone.class_names))

    def relabel(split: ImageSet) -> ImageSet:
        return ImageSet(split.images, teacher_labels(backbone, split.images), names, split.name)

    return TaskData(data.spec, relabel(data.train), relabel(data.val), relabel(data.test))


def train_module(
    zoo: Zoo,
    recipe: MidstreamRecipe,
    *,
    backbone: Backbone | None = None,
    backbone_name: str = DEFAULT_BACKBONE,
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    resume: bool = False,
    progress: bool | None = None,
    overwrite: bool = False,
    tensorboard_dir: str | Path | None = None,
    skip_bad: bool = False,
) -> ModuleManifest:
    """Train one module on its midstream task and add it to ``zoo`` (rank 0 writes).

    Checkpoints go to ``ZOO/.work/NAME`` and are removed once the module is in the zoo. An
    interrupted run keeps a checkpoint there for ``resume`` (a run without ``resume``
    starts afresh and clears it) and leaves no work folder without one.
    ``skip_bad``: a user folder's unreadable images are left out instead of stopping the run.
    """
    check_module_name(recipe.name)
    # Join torchrun's process group first: until then every rank believes it is rank 0,
    # and each would clear the shared work directory below.
    dist_utils.init_from_env()
    if recipe.name in zoo and not overwrite:
        raise VimwError(f"the zoo {zoo.root} already has a module named {recipe.name!r} (use --overwrite)")
    backbone = backbone or create_backbone(backbone_name, image_size=image_size)
    data = load_task(recipe.task, seed=recipe.train.seed, max_train=recipe.max_train, max_test=recipe.max_test,
                     skip_bad=skip_bad)
    task_extra = {"origins": _origins(data.spec.dataset)}
    if data.kind == "distill":
        started = time.perf_counter()
        data = label_with_teacher(data, backbone)
        task_extra["teacher"] = {"arch": backbone.arch, "image_size": native_size(backbone),
                                 "targets": "ImageNet top-1 of the same backbone, no module",
                                 "seconds": round(time.perf_counter() - started, 2)}
    # The module's and the head's initial weights come from the run's seed as well, so
    # the same recipe gives the same module (``fit`` seeds only what happens after).
    torch.manual_seed(recipe.train.seed)
    module = ModuleSet.create(recipe.module_config(), backbone.sites)
    model = TaskModel(backbone, head_config_for(backbone, data.kind, data.num_classes), plugin=module)
    model.to(next(backbone.parameters()).device)  # the module and head follow the backbone

    work = zoo.root / ZOO_WORK_DIR / recipe.name
    if not resume and work.exists() and dist_utils.is_main_process():
        shutil.rmtree(work)
    dist_utils.barrier()
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = fit(model, data, recipe.train, checkpoint_dir=work, resume=resume, progress=progress,
                     log_path=work / TRAINING_LOG_FILE, tensorboard_dir=tensorboard_dir)
    except BaseException:  # Ctrl-C included
        if dist_utils.is_main_process():
            _keep_only_resumable(work)
        raise
    test = evaluate(model, data.test, recipe.train.eval_batch_size)
    manifest = ModuleManifest(
        name=recipe.name,
        module=module.config.to_dict(),
        backbone=backbone.record().to_dict(),
        task={**data.spec.to_dict(), "num_classes": data.num_classes, "class_names": list(data.class_names),
              "train_images": len(data.train), "val_images": len(data.val), "test_images": len(data.test),
              **task_extra},
        weights={},
        metrics={"val_score": result.best_score, "best_epoch": result.best_epoch,
                 **{f"test_{k}": v for k, v in test.items()}},
        training={**recipe.train.to_dict(), "seconds": round(result.seconds, 2),
                  "images_per_second": round(result.images_per_second, 1), "history": result.history,
                  "world_size": dist_utils.world_size()},
        head={"config": model.head_config.to_dict()},
    )
    if dist_utils.is_main_process():
        head_state = {k: v for k, v in model.head.state_dict().items()}
        log_file = work / TRAINING_LOG_FILE
        zoo.add(manifest, module, head_state, overwrite=overwrite,
                training_log=log_file.read_text(encoding="utf-8") if log_file.exists() else None)
        record_modules(zoo.root, [recipe.to_dict()], backbone=backbone.record().source,
                       image_size=backbone.preprocess.size)  # ZOO/recipe.json: how it was trained
        _remove_work(work)
    dist_utils.barrier()
    return manifest


def _remove_work(work: Path) -> None:
    """Remove a module's work folder, and ``ZOO/.work`` once no other module trains there."""
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):  # another module's folder is still in it
        work.parent.rmdir()


def _keep_only_resumable(work: Path) -> None:
    """After an interrupted training: keep a work folder that holds a checkpoint (``resume``
    continues from it), remove one that holds none."""
    from vimw.training.checkpoint import has_checkpoint

    if has_checkpoint(work):
        log.warning("the checkpoint in %s is kept: 'vimw zoo train --resume' continues from it "
                    "('vimw zoo build' resumes by itself)", work)
    else:
        _remove_work(work)


def _origins(dataset: str) -> dict | None:
    from vimw.data.sources import DATASET_ORIGINS

    return DATASET_ORIGINS.get(dataset)


def build_zoo(
    root: str | Path,
    recipes: tuple[MidstreamRecipe, ...] = DEFAULT_RECIPE,
    *,
    backbone_name: str = DEFAULT_BACKBONE,
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    progress: bool | None = None,
    device: str = "cpu",
    jobs: int = 1,
) -> Zoo:
    """Train every recipe the zoo does not hold yet (resuming an interrupted one).

    ``jobs`` > 1: that many modules at once, each in its own process (spawned, with
    ``cpu_count // jobs`` threads). Under torchrun (``WORLD_SIZE`` > 1), rank r trains
    recipes r, r + W, r + 2W... on its own (the zoo directory must be shared by the
    ranks), then all ranks meet once so that rank 0 returns a complete zoo.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise VimwError(f"jobs must be a positive integer, got {jobs!r}")
    for recipe in recipes:
        check_module_name(recipe.name)
    zoo = Zoo(root)
    world, rank = _launcher_world()
    if world > 1:
        with _single_process_env():
            mine = tuple(recipes[rank::world])
            _build_serial(zoo, mine, backbone_name, image_size, progress, device)
        _meet_all_ranks()
        return zoo
    if jobs == 1:
        _build_serial(zoo, recipes, backbone_name, image_size, progress, device)
        return zoo
    _build_parallel(zoo, recipes, backbone_name, image_size, device, jobs)
    return zoo


def _build_serial(zoo, recipes, backbone_name, image_size, progress, device) -> None:
    pending = [r for r in recipes if r.name not in zoo]
    for recipe in recipes:
        if recipe not in pending:
            log.info("zoo %s: %s already present, skipped", zoo.root, recipe.name)
    if not pending:
        return
    backbone = create_backbone(backbone_name, image_size=image_size).to(device)
    for recipe in pending:
        log.info("zoo %s: training %s on %s", zoo.root, recipe.name, recipe.task)
        manifest = train_module(zoo, recipe, backbone=backbone, resume=True, progress=progress)
        log.info("  %s: val %.4f, test %s", recipe.name, manifest.metrics["val_score"],
                 {k: round(v, 4) for k, v in manifest.metrics.items() if k.startswith("test_")})


def _train_in_worker(root: str, recipe: MidstreamRecipe, backbone_name: str, image_size: int | None,
                     device: str, threads: int) -> tuple[str, float]:
    """One module in a worker process of ``build_zoo(jobs=N)``: (name, seconds)."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    backbone = create_backbone(backbone_name, image_size=image_size).to(device)
    train_module(Zoo(root), recipe, backbone=backbone, resume=True, progress=False)
    return recipe.name, time.perf_counter() - started


def _build_parallel(zoo, recipes, backbone_name, image_size, device, jobs) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pending = [r for r in recipes if r.name not in zoo]
    if not pending:
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failures = []
    # Spawned (not forked) workers: a fork would copy this process's torch thread pools.
    with ProcessPoolExecutor(max_workers=min(jobs, len(pending)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_in_worker, str(zoo.root), recipe, backbone_name, image_size, device,
                               threads): recipe for recipe in pending}
        for future in as_completed(futures):
            recipe = futures[future]
            try:
                name, seconds = future.result()
                log.info("zoo %s: %s trained in %.0f s", zoo.root, name, seconds)
            except Exception as exc:  # every module is independent: report them all at the end
                failures.append(f"{recipe.name}: {type(exc).__name__}: {exc}")
    if failures:
        raise VimwError(f"{len(failures)} of {len(pending)} module(s) failed to train "
                        f"(the others are in {zoo.root}; run the build again to retry):\n  " + "\n  ".join(failures))


def _launcher_world() -> tuple[int, int]:
    """(world size, rank) that torchrun describes in the environment, before any process group."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError as exc:
        raise VimwError(f"invalid WORLD_SIZE/RANK in the environment: {exc}") from None


_LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@contextmanager
def _single_process_env():
    """Hide torchrun's variables so each rank trains its own modules as a single process."""
    saved = {k: os.environ.get(k) for k in _LAUNCHER_VARIABLES}
    os.environ.update({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _meet_all_ranks() -> None:
    """One barrier on a gloo group: rank 0 waits until every rank's modules are in the zoo."""
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        # Ranks may finish hours apart: the rendezvous waits as long as a build may take.
        dist.init_process_group(backend="gloo", timeout=timedelta(hours=24))
    dist.barrier()

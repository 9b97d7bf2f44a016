"""Midstream training: one fresh module + a task head on a frozen backbone, stored in a zoo.

``train_module`` trains and adds one module; ``build_zoo`` runs a recipe (a list of
``MidstreamRecipe``), skipping modules the zoo already holds, so an interrupted build
picks up where it stopped.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vimw.backbones import Backbone, create_backbone
from vimw.data import load_task
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


# The default zoo on EfficientNet-Lite0 at 64 px: four diverse midstream tasks, none of
# which shows footwear or bags, so the Fashion-MNIST footwear-and-bags downstream task
# is unseen. Sizes keep the whole build near 10 minutes on 2 CPU cores.
DEFAULT_RECIPE: tuple[MidstreamRecipe, ...] = (
    MidstreamRecipe("fmnist-apparel", "fmnist-apparel", train=TrainConfig(epochs=3, lr=2e-3), max_train=6000, max_test=2000),
    MidstreamRecipe("mnist-digits", "mnist", train=TrainConfig(epochs=3, lr=2e-3), max_train=4000),
    MidstreamRecipe("mnist-segmentation", "mnist-segmentation", train=TrainConfig(epochs=4, lr=3e-3), max_train=3000),
    MidstreamRecipe("fmnist-rotation", "fmnist-rotation", train=TrainConfig(epochs=3, lr=2e-3), max_train=6000, max_test=2000),
)


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
) -> ModuleManifest:
    """Train one module on its midstream task and add it to ``zoo`` (rank 0 writes)."""
    check_module_name(recipe.name)
    # Join torchrun's process group first: until then every rank believes it is rank 0,
    # and each would clear the shared work directory below.
    dist_utils.init_from_env()
    if recipe.name in zoo and not overwrite:
        raise VimwError(f"the zoo {zoo.root} already has a module named {recipe.name!r} (use --overwrite)")
    backbone = backbone or create_backbone(backbone_name, image_size=image_size)
    data = load_task(recipe.task, seed=recipe.train.seed, max_train=recipe.max_train, max_test=recipe.max_test)
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
    result = fit(model, data, recipe.train, checkpoint_dir=work, resume=resume, progress=progress,
                 log_path=work / TRAINING_LOG_FILE, tensorboard_dir=tensorboard_dir)
    test = evaluate(model, data.test, recipe.train.eval_batch_size)
    manifest = ModuleManifest(
        name=recipe.name,
        module=module.config.to_dict(),
        backbone=backbone.record().to_dict(),
        task={**data.spec.to_dict(), "num_classes": data.num_classes, "class_names": list(data.class_names),
              "train_images": len(data.train), "val_images": len(data.val), "test_images": len(data.test)},
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
        shutil.rmtree(work, ignore_errors=True)
    dist_utils.barrier()
    return manifest


def build_zoo(
    root: str | Path,
    recipes: tuple[MidstreamRecipe, ...] = DEFAULT_RECIPE,
    *,
    backbone_name: str = DEFAULT_BACKBONE,
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    progress: bool | None = None,
    device: str = "cpu",
) -> Zoo:
    """Train every recipe the zoo does not hold yet (resuming an interrupted one)."""
    zoo = Zoo(root)
    backbone = create_backbone(backbone_name, image_size=image_size).to(device)
    for recipe in recipes:
        if recipe.name in zoo:
            log.info("zoo %s: %s already present, skipped", zoo.root, recipe.name)
            continue
        log.info("zoo %s: training %s on %s", zoo.root, recipe.name, recipe.task)
        manifest = train_module(zoo, recipe, backbone=backbone, resume=True, progress=progress)
        log.info("  %s: val %.4f, test %s", recipe.name, manifest.metrics["val_score"],
                 {k: round(v, 4) for k, v in manifest.metrics.items() if k.startswith("test_")})
    return zoo

"""The rule that keeps the downstream benchmark honest, checked on every built-in midstream recipe.

No midstream task may see an image of the downstream benchmark's held-out data, labelled
or not: no Fashion-MNIST sandal, sneaker, ankle boot or bag (any split), no image of the
official Fashion-MNIST test file, no scikit-learn 8x8 digit, no elpv solar cell, and no
scikit-image LFW face.
Each task declares its images through its dataset (whose original files are listed in
``DATASET_ORIGINS``) and its classes; the downstream tasks' held-out images are derived
the same way, and the two sets must not meet.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vimw.data import TaskSpec, get_task_spec, load_dataset
from vimw.data.photos import PHOTO_FILES
from vimw.data.sources import DATASET_ORIGINS
from vimw.data.specs import SAME_SOURCE_KINDS
from vimw.recipes import load_recipe, midstream_recipes
from vimw.workflows.midstream import DEFAULT_RECIPE, DEMO_RECIPE

DOWNSTREAM_TASKS = ("fmnist", "fmnist-footwear-bags", "digits8x8", "elpv-defects")
# Downstream tasks whose classes no midstream task may show at all (the "unseen" tasks).
NOVEL_TASKS = ("fmnist-footwear-bags", "digits8x8", "elpv-defects")
RESERVED_WORDS = ("lfw",)  # scikit-image's LFW faces: an independent check, never used
RECIPE_FILE = Path(__file__).resolve().parents[1] / "recipes" / "default.yaml"


def classes_of(spec: TaskSpec) -> tuple[str, ...]:
    if spec.classes is not None:
        return spec.classes
    train, _ = load_dataset(spec.dataset)
    return train.class_names


def images_seen(spec: TaskSpec) -> set[tuple[str, str]]:
    """(original file, class) of every image a task's train, val or test split can hold."""
    if spec.dataset not in DATASET_ORIGINS:
        raise AssertionError(f"task {spec.name!r}: dataset {spec.dataset!r} declares no origins")
    origins = DATASET_ORIGINS[spec.dataset]
    splits = ("train",) if spec.kind in SAME_SOURCE_KINDS else ("train", "test")
    return {(origins[split], c) for split in splits for c in classes_of(spec)}


def held_out() -> set[tuple[str, str]]:
    forbidden = set()
    for name in DOWNSTREAM_TASKS:
        spec = get_task_spec(name)
        origins = DATASET_ORIGINS[spec.dataset]
        forbidden |= {(origins["test"], c) for c in classes_of(spec)}
        if name in NOVEL_TASKS:
            forbidden |= {(origins["train"], c) for c in classes_of(spec)}
    return forbidden


def violations(spec: TaskSpec) -> list[str]:
    found = [f"{spec.name}: {origin} / {c}" for origin, c in sorted(images_seen(spec) & held_out())]
    text = f"{spec.dataset} {DATASET_ORIGINS.get(spec.dataset)}".lower()
    found += [f"{spec.name}: reserved data {word!r}" for word in RESERVED_WORDS if word in text]
    return found


def built_in_tasks() -> list[str]:
    tasks = {r.task for r in DEFAULT_RECIPE + DEMO_RECIPE}
    tasks |= {m.task for m in midstream_recipes(load_recipe(RECIPE_FILE))}
    return sorted(tasks)


@pytest.mark.parametrize("task", built_in_tasks())
def test_no_built_in_midstream_task_sees_held_out_downstream_images(task):
    assert violations(get_task_spec(task)) == []


def test_the_rule_catches_tasks_that_break_it():
    bad = [
        TaskSpec("bags", "fashion-mnist-train", classes=("Coat", "Bag")),  # a bag, even from the training file
        TaskSpec("apparel-official-test", "fashion-mnist", classes=("Coat",)),  # the official test file
        TaskSpec("digits-rotation", "digits8x8", kind="rotation"),  # unlabelled use still counts
        TaskSpec("all-fmnist-jigsaw", "fashion-mnist-train", kind="jigsaw"),  # all classes include footwear
        TaskSpec("cell-edges", "elpv", kind="edges", classes=("functional",)),  # any solar cell
    ]
    for spec in bad:
        assert violations(spec), spec.name
    assert violations(TaskSpec("ok", "fashion-mnist-train", classes=("Coat", "Shirt"))) == []


def test_the_default_zoo_is_diverse_and_covers_every_family():
    kinds = {get_task_spec(r.task).kind for r in DEFAULT_RECIPE}
    assert len(DEFAULT_RECIPE) >= 8
    assert {"classification", "segmentation", "edges", "denoise", "rotation", "jigsaw", "instance",
            "distill"} <= kinds
    domains = {get_task_spec(r.task).dataset for r in DEFAULT_RECIPE if get_task_spec(r.task).kind == "classification"}
    assert len(domains) >= 3
    assert {r.name for r in DEMO_RECIPE} < {r.name for r in DEFAULT_RECIPE}


def test_photos_never_include_the_reserved_faces():
    assert not any(word in name.lower() for _, name in PHOTO_FILES for word in RESERVED_WORDS)
    assert not any("faces" in name.lower() for _, name in PHOTO_FILES)

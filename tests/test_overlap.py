"""Overlap between zoo modules and downstream tasks, derived from the modules' manifests.

A toy zoo (real zoo directories holding tiny modules whose manifests carry made-up
tasks) checks each way of overlapping; the default recipe's ten modules check the rule
on the real tasks: 8x8 digits leave out every ``mnist-*`` module, ``fmnist`` every
``fmnist-*`` one, and the unseen tasks keep the whole zoo.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from helpers.reliability import tiny_manifest, tiny_module
from vimw.data import TaskSpec, get_task_spec, sources
from vimw.data.provenance import image_digests, source_record
from vimw.data.sources import DATASET_ORIGINS
from vimw.errors import DataError, RegistryError
from vimw.workflows.midstream import DEFAULT_RECIPE
from vimw.zoo import Zoo
from vimw.zoo.overlap import leave_overlap_out, overlap_reasons, zoo_overlaps

TOY_FILES = {"train": "toy/train-file", "test": "toy/test-file"}


def toy_task(name: str, classes, origins=TOY_FILES, dataset: str = "toy", kind: str = "classification") -> dict:
    """A manifest's ``task`` entry for a made-up dataset (its origins written as a module records them)."""
    return {"name": name, "dataset": dataset, "kind": kind, "classes": list(classes), "origins": origins}


def make_zoo(root, tasks: dict[str, dict]) -> Zoo:
    zoo = Zoo(root)
    for seed, (name, task) in enumerate(tasks.items()):
        manifest = tiny_manifest(name)
        manifest.task = task
        zoo.add(manifest, tiny_module(seed), None)
    return zoo


def kinds(reasons) -> list[str]:
    return [reason.kind for reason in reasons]


def recipe_entry(recipe) -> dict:
    """A default-recipe module's manifest ``task`` entry, as ``train_module`` writes it (no training needed)."""
    spec = get_task_spec(recipe.task)
    return {**spec.to_dict(), "origins": DATASET_ORIGINS.get(spec.dataset)}


@pytest.fixture(scope="module")
def default_zoo(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("default") / "zoo", {r.name: recipe_entry(r) for r in DEFAULT_RECIPE})


# -- the rule on a toy zoo ---------------------------------------------------------------------
def test_toy_zoo_reasons_per_module(tmp_path):
    task = source_record(toy_task("cats", ["cat", "dog"]))
    zoo = make_zoo(tmp_path / "zoo", {
        "same-images": toy_task("pets", ["dog", "fox"]),  # the same file, a shared class
        "classes-only": toy_task("pets-elsewhere", ["cat"], origins={"train": "toy/other", "test": "toy/other"}),
        "disjoint": toy_task("birds", ["owl", "jay"]),  # the same files, other classes
        "other-dataset": toy_task("cats2", ["cat"], origins={"train": "else/a", "test": "else/b"}, dataset="else"),
        "untraceable": {"name": "mystery", "dataset": "mystery", "classes": ["cat"]},
    })
    found = zoo_overlaps({name: zoo.manifest(name).task for name in zoo.names()}, task)
    assert kinds(found["same-images"]) == ["images", "classes"]
    assert "toy/train-file (dog)" in str(found["same-images"][0])
    assert kinds(found["classes-only"]) == ["classes"] and "learned cat (dataset toy)" in str(found["classes-only"][0])
    assert found["disjoint"] == [] and found["other-dataset"] == []
    assert kinds(found["untraceable"]) == ["unknown"]
    assert leave_overlap_out(zoo, task) == ["disjoint", "other-dataset"]


def test_a_module_of_another_kind_overlaps_by_the_classes_its_images_show():
    task = source_record(toy_task("cats", ["cat"]))
    reasons = overlap_reasons(toy_task("cat-masks", ["cat"], origins={"train": "toy/x", "test": "toy/x"},
                                       kind="segmentation"), task)
    assert kinds(reasons) == ["classes"] and "saw images of cat in a segmentation task" in str(reasons[0])


def test_an_instance_module_reads_only_its_training_file():
    task = source_record(toy_task("cats", ["cat"], origins={"train": "toy/a", "test": "toy/b"}))
    instance = toy_task("views", ["cat"], origins={"train": "toy/c", "test": "toy/b"}, kind="instance",
                        dataset="toy-c")
    assert overlap_reasons(instance, task) == []  # it never reads its test split (views of training images)
    rotation = {**instance, "kind": "rotation"}
    assert kinds(overlap_reasons(rotation, task)) == ["images"]


def test_user_archives_overlap_by_image_content(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (12, 8, 8), dtype=np.uint8), np.arange(12) % 3
    np.savez(tmp_path / "a.npz", images=images, labels=labels)
    np.savez(tmp_path / "copy.npz", images=images[::-1], labels=labels[::-1])  # same images, other order
    np.savez(tmp_path / "other.npz", images=255 - images, labels=labels)
    task = source_record({"name": "a", "dataset": f"npz:{tmp_path / 'a.npz'}"})
    copy = overlap_reasons({"name": "c", "dataset": f"npz:{tmp_path / 'copy.npz'}"}, task)
    assert kinds(copy) == ["images"] and "12 image(s) with identical content" in str(copy[0])
    assert overlap_reasons({"name": "o", "dataset": f"npz:{tmp_path / 'other.npz'}"}, task) == []


def test_user_folders_overlap_by_file_content_and_a_vanished_folder_is_untraceable(tmp_path):
    for name, value in (("cat/1.png", 10), ("cat/2.png", 20), ("dog/3.png", 30)):
        path = tmp_path / "mine" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (6, 6), value).save(path)
    shutil.copytree(tmp_path / "mine" / "dog", tmp_path / "theirs" / "hound")  # one file shared, renamed class
    (tmp_path / "apart" / "x").mkdir(parents=True)
    Image.new("L", (6, 6), 99).save(tmp_path / "apart" / "x" / "9.png")
    task = source_record({"name": "mine", "dataset": f"folder:{tmp_path / 'mine'}"})
    shared = overlap_reasons({"name": "t", "dataset": f"folder:{tmp_path / 'theirs'}"}, task)
    assert kinds(shared) == ["images"] and "1 image(s)" in str(shared[0])
    assert overlap_reasons({"name": "a", "dataset": f"folder:{tmp_path / 'apart'}"}, task) == []
    gone = overlap_reasons({"name": "g", "dataset": f"folder:{tmp_path / 'gone'}"}, task)
    assert kinds(gone) == ["unknown"]
    recorded = {"name": "g", "dataset": f"folder:{tmp_path / 'gone'}",
                "image_digests": sorted(image_digests(f"folder:{tmp_path / 'theirs'}"))}
    assert kinds(overlap_reasons(recorded, task)) == ["images"]  # digests written at training time still count


def test_a_registered_dataset_declares_its_provenance(monkeypatch):
    for table in ("_DATASETS", "DATASET_ORIGINS", "DATASET_CLASSES", "DATASET_LABEL_SPACES"):
        monkeypatch.setattr(sources, table, dict(getattr(sources, table)))
    sources.register_dataset("my-digits", lambda: None, origins={"train": "lab/scans", "test": "lab/scans"},
                             classes=tuple("0123456789"), label_space="digits 0-9")
    spec = TaskSpec("mine", "my-digits")
    assert kinds(overlap_reasons(recipe_entry(next(r for r in DEFAULT_RECIPE if r.name == "mnist-digits")),
                                 spec)) == ["classes"]
    sources.register_dataset("my-digits", lambda: None, overwrite=True)  # no provenance any more
    with pytest.raises(DataError, match="cannot be traced"):
        overlap_reasons(toy_task("pets", ["cat"]), spec)
    with pytest.raises(RegistryError, match="origins must name"):
        sources.register_dataset("bad", lambda: None, origins={"train": "x"})


def test_a_task_whose_images_cannot_be_traced_is_refused():
    with pytest.raises(DataError, match="cannot be traced"):
        overlap_reasons(toy_task("pets", ["cat"]), source_record({"name": "m", "dataset": "mystery"}))


# -- the rule on the default recipe ------------------------------------------------------------
def test_digits8x8_runs_without_the_mnist_modules_by_the_shared_label_space(default_zoo):
    found = zoo_overlaps({n: default_zoo.manifest(n).task for n in default_zoo.names()}, get_task_spec("digits8x8"))
    overlapping = {name: kinds(reasons) for name, reasons in found.items() if reasons}
    # No image is shared (MNIST is not scikit-learn's digits): the classes are, by the declared label space.
    assert overlapping == {"mnist-digits": ["classes"], "mnist-segmentation": ["classes"]}
    assert "label space 'digits 0-9'" in str(found["mnist-digits"][0])
    kept = leave_overlap_out(default_zoo, "digits8x8")
    assert len(kept) == len(DEFAULT_RECIPE) - 2 and not any(name.startswith("mnist-") for name in kept)


def test_fmnist_runs_without_the_fmnist_modules(default_zoo):
    kept = leave_overlap_out(default_zoo, "fmnist")
    assert set(kept) == {r.name for r in DEFAULT_RECIPE if not r.name.startswith("fmnist-")}


@pytest.mark.parametrize("task", ["fmnist-footwear-bags", "elpv-defects"])
def test_unseen_tasks_keep_the_whole_default_zoo(default_zoo, task):
    assert leave_overlap_out(default_zoo, task) == sorted(r.name for r in DEFAULT_RECIPE)


def test_mnist_shares_images_with_both_mnist_modules(default_zoo):
    found = zoo_overlaps({n: default_zoo.manifest(n).task for n in default_zoo.names()}, get_task_spec("mnist"))
    assert {name for name, reasons in found.items() if "images" in kinds(reasons)} == {
        "mnist-digits", "mnist-segmentation"}

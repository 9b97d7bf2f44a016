"""The zoo's recipe.json is written by the library (train_module / build_zoo), and the zoo's
backbone is found from the module manifests with clear errors."""

from __future__ import annotations

import json
import threading

import pytest

from conftest import IMAGE_SIZE, ZOO_MODULES
from vimw.errors import FormatError
from vimw.recipes import midstream_recipes, read_effective
from vimw.zoo.recipe import backbone_source, record_modules


def test_modules_trained_from_python_are_recorded_in_the_zoo_recipe(tiny_zoo):
    # tiny_zoo is built by calling train_module directly, as Python users do (no CLI).
    saved = read_effective(tiny_zoo.root)  # validates it as a recipe
    assert saved is not None, "train_module left no recipe.json"
    assert saved["zoo"]["backbone"] == "efficientnet_lite0" and saved["zoo"]["image_size"] == IMAGE_SIZE
    assert [m["name"] for m in saved["zoo"]["modules"]] == list(ZOO_MODULES)
    rebuilt = midstream_recipes(saved)  # the file rebuilds the same recipes
    assert [r.train.seed for r in rebuilt] == [0, 1, 2] and all(r.train.epochs == 1 for r in rebuilt)


def _entry(name: str, epochs: int = 1) -> dict:
    return {"name": name, "task": "mnist", "kind": "convpass", "module": {}, "train": {"epochs": epochs},
            "max_train": None, "max_test": None}


def test_record_keeps_earlier_entries_and_other_sections(tmp_path):
    root = tmp_path / "zoo"
    record_modules(root, [_entry("a", epochs=2)], backbone="efficientnet_lite0", image_size=64)
    payload = json.loads((root / "recipe.json").read_text())
    payload["aggregate"] = {"task": "mnist"}
    (root / "recipe.json").write_text(json.dumps(payload))
    record_modules(root, [_entry("a", epochs=9), _entry("b")], backbone="efficientnet_lite0", image_size=64)
    saved = read_effective(root)
    assert [(m["name"], m["train"]["epochs"]) for m in saved["zoo"]["modules"]] == [("a", 2), ("b", 1)]
    assert saved["aggregate"] == {"task": "mnist"}


def test_concurrent_records_lose_no_module(tmp_path):
    root = tmp_path / "zoo"
    names = [f"m{i}" for i in range(8)]
    threads = [threading.Thread(target=record_modules, args=(root, [_entry(n)]),
                                kwargs={"backbone": "efficientnet_lite0", "image_size": 64}) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(m["name"] for m in read_effective(root)["zoo"]["modules"]) == names


def test_a_damaged_recipe_is_replaced_when_recording(tmp_path):
    root = tmp_path / "zoo"
    root.mkdir()
    (root / "recipe.json").write_text("{not json")
    record_modules(root, [_entry("a")], backbone="efficientnet_lite0", image_size=None)
    saved = read_effective(root)
    assert saved["zoo"]["image_size"] == 0 and [m["name"] for m in saved["zoo"]["modules"]] == ["a"]


def test_backbone_source_prefers_the_recorded_source(tmp_path):
    assert backbone_source(tmp_path, {"arch": "hf:clip", "source": "hf:/models/clip"}) == "hf:/models/clip"
    assert backbone_source(tmp_path, {"arch": "efficientnet_lite0"}) == "efficientnet_lite0"
    assert backbone_source(tmp_path, {"arch": "hf:clip"}) == "hf:clip"  # no recipe: the arch itself


def test_backbone_source_of_an_old_hf_module_comes_from_the_zoo_recipe(tmp_path):
    record_modules(tmp_path, [_entry("a")], backbone="hf:/models/clip", image_size=32)
    assert backbone_source(tmp_path, {"arch": "hf:clip"}) == "hf:/models/clip"
    assert backbone_source(tmp_path, {"arch": "hf:other"}) == "hf:other"  # a different model: not guessed


def test_backbone_source_names_the_damaged_recipe_and_the_way_out(tmp_path):
    (tmp_path / "recipe.json").write_text("[1, 2")
    with pytest.raises(FormatError) as info:
        backbone_source(tmp_path, {"arch": "hf:clip"})
    assert "recipe.json" in str(info.value) and "--backbone" in str(info.value)
    # A module that records its source never needs the recipe.
    assert backbone_source(tmp_path, {"arch": "hf:clip", "source": "hf:/m"}) == "hf:/m"
    with pytest.raises(FormatError):
        backbone_source(tmp_path, {})

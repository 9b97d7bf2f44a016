"""Recipes: YAML in, validated, flags override, the effective recipe saved beside every result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import IMAGE_SIZE, write_image_folder, write_npz
from vimw.cli.main import main
from vimw.errors import FormatError, MissingExtraError
from vimw.recipes import (
    default_recipe,
    load_recipe,
    midstream_recipes,
    read_effective,
    resolve,
    validate_recipe,
)
from vimw.zoo import Zoo
from vimw.workflows.midstream import DEFAULT_BACKBONE, DEFAULT_IMAGE_SIZE, DEFAULT_RECIPE

yaml = pytest.importorskip("yaml")
REPO = Path(__file__).resolve().parents[1]


def test_default_yaml_reproduces_the_default_zoo_and_demo_aggregation():
    recipe = load_recipe(REPO / "recipes" / "default.yaml")
    assert recipe["zoo"]["backbone"] == DEFAULT_BACKBONE and recipe["zoo"]["image_size"] == DEFAULT_IMAGE_SIZE
    modules = midstream_recipes(recipe)
    assert [m.name for m in modules] == [m.name for m in DEFAULT_RECIPE]
    for got, want in zip(modules, DEFAULT_RECIPE):
        assert (got.task, got.kind, got.max_train, got.max_test) == (want.task, want.kind, want.max_train, want.max_test)
        assert got.module_config() == want.module_config()
        assert got.train == want.train
    built_in = default_recipe()
    assert recipe["aggregate"] == built_in["aggregate"]
    assert isinstance(recipe["transfer"], dict)  # passed through as is


@pytest.mark.parametrize(
    "recipe, fragment",
    [
        ({"zoo": {"bacbone": "x"}}, "zoo: unknown key(s) ['bacbone']"),
        ({"zo": {}}, "unknown key(s) ['zo']"),
        ({"zoo": {"modules": [{"task": "mnist"}]}}, "zoo.modules[0]: missing required key 'name'"),
        ({"zoo": {"modules": [{"name": "a", "task": "t", "train": {"epochs": "3"}}]}},
         "zoo.modules[0].train.epochs: expected an integer, got str"),
        ({"zoo": {"modules": [{"name": "a", "task": "t", "train": {"epoch": 3}}]}},
         "unknown training setting(s) ['epoch']"),
        ({"zoo": {"modules": [{"name": "a", "task": "t", "module": {"hiden_dim": 3}}]}},
         "unknown convpass setting(s) ['hiden_dim']"),
        ({"zoo": {"modules": [{"name": "a", "task": "t", "kind": "conv"}]}}, "unknown module kind 'conv'"),
        ({"zoo": {"modules": [{"name": "a", "task": "t"}, {"name": "a", "task": "u"}]}}, "appears twice"),
        ({"zoo": {"image_size": "64"}}, "zoo.image_size: expected an integer or null"),
        ({"aggregate": {"shots": True}}, "aggregate.shots: expected an integer or null, got bool"),
        ({"aggregate": {"method": "best"}}, "unknown method 'best'"),
        ({"aggregate": {"train": {"lr": -1.0}}}, "aggregate.train"),
        ({"transfer": [1, 2]}, "transfer: expected a mapping"),
        ({"format": 2}, "format 2 is not supported"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_invalid_recipes_are_refused_with_the_key_named(recipe, fragment):
    with pytest.raises(FormatError) as info:
        validate_recipe(recipe)
    assert fragment in str(info.value)


def test_yaml_errors_and_missing_files_are_vimw_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("zoo: [unclosed\n")
    with pytest.raises(FormatError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(FormatError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_recipe(empty) == {}


def test_missing_pyyaml_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "r.yaml"
    path.write_text("zoo: {}\n")
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(MissingExtraError, match=r"vimw\[recipes\]"):
        load_recipe(path)
    json_path = tmp_path / "r.json"
    json_path.write_text('{"zoo": {}}')
    assert load_recipe(json_path) == {"zoo": {}}  # JSON recipes need no extra


def test_overrides_replace_and_merge_training_settings():
    recipe = {"aggregate": {"task": "a", "shots": 10, "train": {"epochs": 30, "lr": 0.03}}}
    result = resolve(recipe, "aggregate", {"shots": 5, "task": None, "train": {"lr": 0.1, "epochs": None}})
    assert result["aggregate"] == {"task": "a", "shots": 5, "train": {"epochs": 30, "lr": 0.1}}
    assert recipe["aggregate"]["shots"] == 10  # the input is not changed
    with pytest.raises(FormatError):
        resolve(recipe, "aggregate", {"shots": "many"})


def _write_recipe(tmp_path: Path) -> Path:
    npz = write_npz(tmp_path / "bands.npz", n=48)
    folder = write_image_folder(tmp_path / "photos", per_class=6)
    recipe = {
        "zoo": {
            "dir": str(tmp_path / "zoo"), "backbone": "efficientnet_lite0", "image_size": 64,
            "modules": [{"name": "bands", "task": f"npz:{npz}", "kind": "convpass", "module": {"hidden_dim": 4},
                         "train": {"epochs": 1, "batch_size": 16, "lr": 0.01}}],
        },
        "aggregate": {"task": f"folder:{folder}", "shots": 3, "out": str(tmp_path / "model"), "method": "ens",
                      "train": {"epochs": 1, "lr": 0.03}},
        "transfer": {"shots": 16},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_cli_build_and_aggregate_from_a_recipe_with_overrides(tmp_path, capsys):
    path = _write_recipe(tmp_path)
    # --image-size overrides the recipe's 64.
    assert main(["zoo", "build", "--recipe", str(path), "--image-size", str(IMAGE_SIZE), "--no-progress"]) == 0
    zoo = Zoo(tmp_path / "zoo")
    assert [name for name, _ in zoo.list()] == ["bands"]
    manifest = zoo.manifest("bands")
    assert manifest.backbone["image_size"] == IMAGE_SIZE and manifest.module["hidden_dim"] == 4
    saved = read_effective(zoo.root)
    assert saved["zoo"]["image_size"] == IMAGE_SIZE
    assert saved["zoo"]["modules"][0]["train"]["epochs"] == 1
    assert saved["zoo"]["modules"][0]["train"]["weight_decay"] is not None  # every setting, not just the file's

    # The zoo comes from the recipe's zoo.dir; --shots and --epochs override the aggregate section.
    assert main(["aggregate", "--recipe", str(path), "--shots", "2", "--epochs", "2", "--no-progress"]) == 0
    model = tmp_path / "model"
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["task"]["shots"] == 2 and manifest["training"]["epochs"] == 2
    assert manifest["training"]["lr"] == 0.03 and manifest["training"]["gate_lr"] == 0.05
    effective = json.loads((model / "recipe.json").read_text())
    assert effective["aggregate"]["shots"] == 2 and effective["aggregate"]["train"]["epochs"] == 2
    assert effective["aggregate"]["zoo"] == str(tmp_path / "zoo") and effective["aggregate"]["method"] == "ens"
    assert effective["zoo"]["modules"][0]["name"] == "bands"  # how the zoo was built, too
    assert effective["transfer"] == {"shots": 16}
    assert "vimw_version" in effective
    # The saved recipe is itself a valid recipe: it reproduces the run.
    assert read_effective(model)["aggregate"] == effective["aggregate"]


def test_cli_refuses_a_bad_recipe_cleanly(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("aggregate:\n  shots: ten\n")
    code = main(["aggregate", "--recipe", str(path), "--zoo", str(tmp_path), "--task", "x", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("vimw: error: ") and "aggregate.shots" in err
    code = main(["aggregate", "--task", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "--zoo" in err and "--out" in err
    empty = tmp_path / "empty.yaml"
    empty.write_text("aggregate: {}\n")
    code = main(["zoo", "build", "--recipe", str(empty)])
    err = capsys.readouterr().err
    assert code == 2 and "no modules under 'zoo'" in err


def test_zoo_train_records_its_module_in_the_zoo_recipe(tmp_path, capsys):
    npz = write_npz(tmp_path / "dots.npz", pattern="dots", n=48)
    args = ["--epochs", "1", "--batch-size", "16", "--image-size", str(IMAGE_SIZE), "--no-progress"]
    assert main(["zoo", "train", "--zoo", str(tmp_path / "zoo"), "--task", f"npz:{npz}", "--name", "dots", *args]) == 0
    saved = read_effective(tmp_path / "zoo")
    assert saved["zoo"]["backbone"] == DEFAULT_BACKBONE and saved["zoo"]["image_size"] == IMAGE_SIZE
    assert [m["name"] for m in saved["zoo"]["modules"]] == ["dots"]


def test_transfer_steps_take_their_options_from_the_recipe_and_flags_win(tmp_path):
    from vimw.cli.main import build_parser
    from vimw.cli.transfer import effective_transfer

    recipe = tmp_path / "tm.json"
    recipe.write_text(json.dumps({"transfer": {
        "weak": "efficientnet_lite0@64+invert", "task": "fmnist", "shots": 16, "base": ["Coat", "Dress"],
        "out": "runs/tm/weak", "apply": {"to": "efficientnet_lite2@224", "lambdas": [0.1, 1.0]},
    }}))

    def effective(argv):
        return effective_transfer(build_parser(argv).parse_args(argv), argv[1])

    _, options, extract = effective(["transfer", "extract", "--recipe", str(recipe), "--shots", "8"])
    assert extract.weak == "efficientnet_lite0@64+invert" and extract.data.base == ("Coat", "Dress")
    assert extract.data.shots == 8 and options["out"] == "runs/tm/weak"  # the user's flag wins
    _, options, apply = effective(["transfer", "apply", "--recipe", str(recipe), "--adapter", "a", "--out", "b"])
    assert (apply.strong, apply.lambdas, options["adapter"]) == ("efficientnet_lite2@224", (0.1, 1.0), "a")


def test_a_transfer_recipe_with_a_bad_step_section_is_refused(tmp_path):
    from vimw.cli.main import main

    recipe = tmp_path / "tm.json"
    recipe.write_text(json.dumps({"transfer": {"apply": "efficientnet_lite2@224"}}))
    assert main(["transfer", "apply", "--recipe", str(recipe), "--adapter", "a"]) == 2

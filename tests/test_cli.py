"""The command line, called in-process: exit codes, what it prints, and clean refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import IMAGE_SIZE, write_image_folder, write_npz
from vimw.cli.main import main
from vimw.zoo import Zoo

TRAIN_ARGS = ["--epochs", "1", "--batch-size", "16", "--lr", "0.01", "--image-size", str(IMAGE_SIZE), "--no-progress"]


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert err.startswith("vimw: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


# -- discovery -------------------------------------------------------------------------------------
def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    for command in ("backbones", "data", "predict", "zoo", "aggregate", "evaluate"):
        assert command in out


def test_zoo_help_lists_its_actions(capsys):
    with pytest.raises(SystemExit):
        main(["zoo", "--help"])
    out = capsys.readouterr().out
    for action in ("train", "build", "list", "show", "verify", "remove"):
        assert action in out


def test_backbones_lists_the_efficientnet_lites(capsys):
    code, out, _ = run(capsys, "backbones")
    assert code == 0
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert name in out
    assert "sites" in out and "M params" in out


def test_data_list_shows_builtin_tasks_and_user_data_syntax(capsys):
    code, out, _ = run(capsys, "data", "list")
    assert code == 0
    for task in ("fmnist-apparel", "fmnist-footwear-bags", "mnist-segmentation", "fmnist-rotation", "digits8x8"):
        assert task in out
    assert "folder:" in out and "npz:" in out


@pytest.mark.slow
def test_predict_with_the_backbone_head_recognises_chelsea(capsys, tmp_path):
    from skimage import data

    path = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    code, out, _ = run(capsys, "predict", "--backbone", "efficientnet_lite0", path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == str(path) and len(lines) == 6
    top = lines[1].split()
    assert top[1] == "285" and " ".join(top[2:]) == "Egyptian cat"  # the standard ImageNet-1k name


# -- the zoo commands ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_zoo(tmp_path_factory) -> Path:
    """A zoo made by ``vimw zoo train`` on a synthetic npz task."""
    root = tmp_path_factory.mktemp("cli")
    npz = write_npz(root / "bands.npz")
    code = main(["zoo", "train", "--zoo", str(root / "zoo"), "--task", f"npz:{npz}", "--name", "bands", *TRAIN_ARGS])
    assert code == 0
    return root / "zoo"


@pytest.fixture
def cli_zoo_copy(cli_zoo, tmp_path) -> Path:
    return Path(shutil.copytree(cli_zoo, tmp_path / "zoo"))


def test_zoo_train_adds_a_verified_module(cli_zoo):
    zoo = Zoo(cli_zoo)
    assert zoo.names() == ["bands"] and zoo.verify() == []
    manifest = zoo.manifest("bands")
    assert manifest.backbone["image_size"] == IMAGE_SIZE and manifest.training["epochs"] == 1
    assert manifest.task["dataset"].startswith("npz:")


def test_zoo_train_prints_what_it_added(capsys, tmp_path):
    npz = write_npz(tmp_path / "dots.npz", pattern="dots", n=48)
    code, out, _ = run(capsys, "zoo", "train", "--zoo", tmp_path / "zoo", "--task", f"npz:{npz}", "--name", "dots",
                       "--kind", "lora", "--rank", "2", *TRAIN_ARGS)
    assert code == 0
    assert out.startswith("added dots (lora, ") and "val_score" in out
    assert Zoo(tmp_path / "zoo").manifest("dots").module["rank"] == 2


def test_zoo_train_refuses_a_taken_name(capsys, cli_zoo_copy, tmp_path):
    npz = write_npz(tmp_path / "again.npz", n=48)
    code, _, err = run(capsys, "zoo", "train", "--zoo", cli_zoo_copy, "--task", f"npz:{npz}", "--name", "bands",
                       *TRAIN_ARGS)
    assert_clean_error(code, err, "bands", "already")


def test_zoo_list_prints_a_table(capsys, cli_zoo):
    code, out, _ = run(capsys, "zoo", "list", "--zoo", cli_zoo)
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:3] == ["name", "kind", "task"]
    assert row.split()[:2] == ["bands", "convpass"] and "efficientnet_lite0" in row


def test_zoo_list_json_is_the_index(capsys, cli_zoo):
    code, out, _ = run(capsys, "zoo", "list", "--zoo", cli_zoo, "--json")
    assert code == 0
    assert json.loads(out) == Zoo(cli_zoo).read_index()


def test_zoo_show_prints_the_manifest(capsys, cli_zoo):
    code, out, _ = run(capsys, "zoo", "show", "bands", "--zoo", cli_zoo)
    assert code == 0
    shown = json.loads(out)
    assert shown["name"] == "bands" and shown["weights"]["sha256"] == Zoo(cli_zoo).manifest("bands").weights["sha256"]


def test_zoo_verify_passes_on_a_sound_zoo(capsys, cli_zoo):
    code, out, _ = run(capsys, "zoo", "verify", "--zoo", cli_zoo)
    assert code == 0 and "1 module(s), all verified" in out


def test_zoo_verify_fails_with_exit_code_1_after_tampering(capsys, cli_zoo_copy):
    path = cli_zoo_copy / "modules" / "bands" / "module.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    code, _, err = run(capsys, "zoo", "verify", "--zoo", cli_zoo_copy)
    assert code == 1
    assert "FAIL bands" in err and "sha256" in err and "1 problem(s)" in err


def test_zoo_remove_deletes_the_module(capsys, cli_zoo_copy):
    code, out, _ = run(capsys, "zoo", "remove", "bands", "--zoo", cli_zoo_copy)
    assert code == 0 and "removed bands" in out
    assert Zoo(cli_zoo_copy).names() == [] and not (cli_zoo_copy / "modules" / "bands").exists()
    code, _, err = run(capsys, "zoo", "show", "bands", "--zoo", cli_zoo_copy)
    assert_clean_error(code, err, "bands")


@pytest.mark.parametrize("action", [["list"], ["verify"], ["show", "x"], ["remove", "x"]])
def test_zoo_commands_refuse_a_missing_zoo(capsys, tmp_path, action):
    missing = tmp_path / "no-such-zoo"
    code, _, err = run(capsys, "zoo", *action, "--zoo", missing)
    assert_clean_error(code, err, str(missing))
    assert not missing.exists()  # refusing must not create it


def test_zoo_show_refuses_a_path_as_module_name(capsys, cli_zoo):
    code, _, err = run(capsys, "zoo", "show", "../bands", "--zoo", cli_zoo)
    assert_clean_error(code, err, "invalid module name")


# -- aggregate, evaluate, predict on a user's image folder ---------------------------------------------------
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("user") / "photos", per_class=8)


@pytest.fixture(scope="module")
def aggregated(tiny_zoo, image_folder, tmp_path_factory) -> tuple[Path, str]:
    """``vimw aggregate`` on the user's folder, from the command line; returns (model dir, stdout)."""
    out = tmp_path_factory.mktemp("model") / "model"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["aggregate", "--zoo", str(tiny_zoo.root), "--task", f"folder:{image_folder}", "--shots", "2",
                     "--method", "ens", "--out", str(out), "--epochs", "2", "--no-progress"])
    assert code == 0
    return out, buffer.getvalue()


def test_aggregate_on_an_image_folder_writes_the_model(aggregated):
    model_dir, out = aggregated
    last = out.splitlines()[-1]  # the result line, after any progress lines
    assert last.startswith("ens on folder:") and "trainable parameters" in last
    assert {p.name for p in model_dir.iterdir()} >= {"manifest.json", "model.safetensors", "gates.png"}
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["method"] == "ens" and manifest["class_names"] == ["kind0", "kind1", "kind2"]
    assert [m["name"] for m in manifest["zoo"]["modules"]] == ["syn-bands", "syn-blocks", "syn-dots"]
    assert manifest["task"]["shots"] == 2


def test_evaluate_scores_the_saved_model_on_its_task(capsys, aggregated):
    model_dir, _ = aggregated
    code, out, _ = run(capsys, "evaluate", "--model", model_dir, "--json")
    assert code == 0
    metrics = json.loads(out)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["score"] == metrics["accuracy"]
    code, out, _ = run(capsys, "evaluate", "--model", model_dir)
    assert code == 0 and "accuracy" in out and "test" in out


def test_predict_with_a_downstream_model_names_the_folder_classes(capsys, aggregated, image_folder):
    model_dir, _ = aggregated
    image = sorted((image_folder / "kind1").glob("*.png"))[0]
    code, out, _ = run(capsys, "predict", "--model", model_dir, image)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == str(image) and len(lines) == 4  # three classes
    names = {line.split()[-1] for line in lines[1:]}
    assert names == {"kind0", "kind1", "kind2"}
    probabilities = [float(line.split()[0]) for line in lines[1:]]
    assert probabilities == sorted(probabilities, reverse=True) and abs(sum(probabilities) - 1) < 0.01


# -- clean refusals -----------------------------------------------------------------------------------------
def test_aggregate_refuses_a_missing_zoo(capsys, tmp_path, image_folder):
    code, _, err = run(capsys, "aggregate", "--zoo", tmp_path / "nowhere", "--task", f"folder:{image_folder}",
                       "--out", tmp_path / "m")
    assert_clean_error(code, err, "nowhere")
    assert not (tmp_path / "m").exists()


def test_aggregate_refuses_an_empty_zoo(capsys, tmp_path, image_folder):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "aggregate", "--zoo", tmp_path / "empty", "--task", f"folder:{image_folder}",
                       "--out", tmp_path / "m")
    assert_clean_error(code, err, "empty")


def test_aggregate_refuses_an_unknown_task(capsys, tiny_zoo, tmp_path):
    code, _, err = run(capsys, "aggregate", "--zoo", tiny_zoo.root, "--task", "no-such-task", "--out", tmp_path / "m")
    assert_clean_error(code, err, "unknown task 'no-such-task'")


def test_aggregate_refuses_more_shots_than_a_class_has(capsys, tiny_zoo, image_folder, tmp_path):
    code, _, err = run(capsys, "aggregate", "--zoo", tiny_zoo.root, "--task", f"folder:{image_folder}",
                       "--shots", "50", "--out", tmp_path / "m")
    assert_clean_error(code, err, "50 shots per class")
    assert not (tmp_path / "m").exists()


def test_aggregate_refuses_full_fine_tuning_before_training(capsys, tiny_zoo, image_folder, tmp_path, monkeypatch):
    from vimw.methods import base

    def must_not_train(*args, **kwargs):
        raise AssertionError("full fine-tuning ran before being refused")

    monkeypatch.setattr(base, "fit", must_not_train)
    code, _, err = run(capsys, "aggregate", "--zoo", tiny_zoo.root, "--task", f"folder:{image_folder}",
                       "--method", "full_ft", "--out", tmp_path / "m")
    assert_clean_error(code, err, "full fine-tuning")


def test_predict_refuses_a_missing_image(capsys, aggregated, tmp_path):
    model_dir, _ = aggregated
    code, _, err = run(capsys, "predict", "--model", model_dir, tmp_path / "nothing.png")
    assert_clean_error(code, err, "nothing.png")


def test_evaluate_refuses_a_missing_model(capsys, tmp_path):
    code, _, err = run(capsys, "evaluate", "--model", tmp_path / "no-model")
    assert_clean_error(code, err, "no-model")


def test_zoo_train_refuses_an_unreadable_npz(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip archive")
    code, _, err = run(capsys, "zoo", "train", "--zoo", tmp_path / "zoo", "--task", f"npz:{bad}", *TRAIN_ARGS)
    assert_clean_error(code, err, "bad.npz")
    assert Zoo(tmp_path / "zoo").names() == []


def test_unknown_command_exits_2_with_one_line(capsys):
    code, out, err = run(capsys, "no-such-command")
    assert_clean_error(code, err, "invalid choice: 'no-such-command'")
    assert out == "" and len(err.splitlines()) == 1


def test_zoo_train_names_a_user_npz_after_its_file(capsys, tmp_path):
    folder = tmp_path / "My Data"
    folder.mkdir()
    npz = write_npz(folder / "street signs.npz", n=48)
    code, out, _ = run(capsys, "zoo", "train", "--zoo", tmp_path / "zoo", "--task", f"npz:{npz}", *TRAIN_ARGS)
    assert code == 0 and out.startswith("added street-signs ")
    assert Zoo(tmp_path / "zoo").names() == ["street-signs"]


def test_predict_refuses_a_segmentation_model(capsys, lite0, make_task, tmp_path):
    from vimw.aggregation import save_downstream
    from vimw.methods import train_downstream
    from vimw.training import TrainConfig

    data = make_task(kind="segmentation", n_train=16, n_val=8, n_test=8)
    result = train_downstream("linear_probe", lite0, data, TrainConfig(epochs=1, batch_size=16))
    save_downstream(tmp_path / "seg", result.model, {"method": "linear_probe", "class_names": list(data.class_names)})
    image = tmp_path / "x.png"
    Image.fromarray(data.test.images[0, 0].numpy()).save(image)
    code, _, err = run(capsys, "predict", "--model", tmp_path / "seg", image)
    assert_clean_error(code, err, "segmentation", "evaluate")


def test_zoo_list_imports_neither_torch_nor_the_other_commands(tiny_zoo):
    # Listing a zoo of thousands must stay fast: it reads index.json only.
    import subprocess
    import sys

    code = ("import sys; from vimw.cli.main import main; rc = main(['zoo', 'list', '--zoo', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(tiny_zoo.root)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in tiny_zoo.names())

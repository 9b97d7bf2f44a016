"""Misuse of every command ends cleanly (the newcomer's misuse set, kept as a test module).

Each case runs ``vimw ARGV`` in-process against one shared workspace (a copy of the tiny
zoo, a saved model, image folders good and bad, corrupt and wrong-kind files) and checks
what a user sees and keeps: the exit code, exactly one ``vimw: error:`` line naming the
cause, no traceback, and every path of the workspace as it was (same bytes, nothing
created, nothing removed). A second test walks every sub-command's parser and tries
out-of-range values for each numeric option.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import IMAGE_SIZE, write_image_folder
from vimw.cli.main import build_parser, main

TEXT_AS_PNG = b"this is a text file, renamed .png\n"


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's sha256, or ``dir``."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def assert_one_error_line(code: int, out: str, err: str, expected_code: int = 2) -> str:
    """The exit code, no traceback, and exactly one ``vimw: error:`` line, the last one printed; returns it."""
    assert code == expected_code, err
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("vimw: error: ")]
    assert len(errors) == 1, err
    assert err.rstrip("\n").splitlines()[-1] == errors[0]
    return errors[0]


# -- the workspace ------------------------------------------------------------------------------------
def _save_untrained(out: Path, backbone, zoo, data) -> None:
    """A gated downstream model on ``zoo`` as ``vimw aggregate`` writes it, without training."""
    from vimw.aggregation import save_downstream
    from vimw.methods import build_model

    model, info = build_model("ens", backbone, data, zoo=zoo)
    save_downstream(out, model, {"method": "ens", **info, "task": data.spec.to_dict(),
                                 "class_names": list(data.class_names)})


def _lite1_twin(ws: Path, tiny_zoo, data) -> None:
    """A zoo on EfficientNet-Lite1 with the tiny zoo's module names, and a model on it."""
    from vimw.backbones import create_backbone
    from vimw.modules import ModuleSet, config_from_dict
    from vimw.zoo import Zoo

    lite1 = create_backbone("efficientnet_lite1", image_size=IMAGE_SIZE)
    zoo = Zoo(ws / "zoo-lite1")
    for name in tiny_zoo.names():
        manifest = tiny_zoo.manifest(name)
        module = ModuleSet.create(config_from_dict(manifest.module), lite1.sites)
        zoo.add(type(manifest)(name=name, module=manifest.module, backbone=lite1.record().to_dict(),
                               task=manifest.task, weights={}), module)
    _save_untrained(ws / "model-lite1", lite1, zoo, data)


def _dense_model(ws: Path, lite0) -> None:
    """A segmentation model (one class per pixel), as the reliability tests save one."""
    from vimw.aggregation import save_downstream
    from vimw.training import TaskModel, head_config_for

    model = TaskModel(lite0, head_config_for(lite0, "segmentation", 2))
    save_downstream(ws / "model-seg", model, {"method": "linear_probe", "class_names": ["background", "digit"]})


def _bad_files(ws: Path) -> None:
    (ws / "notes.txt").write_text("not a zoo, not a model\n")
    (ws / "text.png").write_bytes(TEXT_AS_PNG)
    (ws / "corrupt.npz").write_bytes(b"PK\x03\x04 cut short")
    np.savez(ws / "pickled.npz", images=np.array([object()] * 4), labels=np.arange(4))
    (ws / "existing.onnx").write_bytes(b"an earlier export")
    (ws / "export-dir").mkdir()
    (ws / "no-manifest").mkdir()
    (ws / "no-manifest" / "weights.bin").write_bytes(b"\0" * 8)
    (ws / "empty").mkdir()
    (ws / "bad.yaml").write_text("aggregate: [1, 2\n")
    (ws / "list.yaml").write_text("- 1\n- 2\n")
    (ws / "unknown-key.yaml").write_text("aggregate:\n  shots_per_class: 5\n")
    (ws / "negative.yaml").write_text("aggregate:\n  shots: -3\n")


def _folders(ws: Path) -> None:
    photos = ws / "photos"
    one = ws / "one-class" / "only"
    one.mkdir(parents=True)
    for image in sorted((photos / "kind0").glob("*.png")):
        shutil.copyfile(image, one / image.name)
    shutil.copytree(photos, ws / "photos-bad")
    (ws / "photos-bad" / "kind1" / "broken.png").write_bytes(TEXT_AS_PNG)
    cut = (photos / "kind2" / "000.png").read_bytes()
    (ws / "photos-bad" / "kind2" / "truncated.png").write_bytes(cut[: len(cut) // 2])
    shutil.copytree(photos, ws / "photos-class-unreadable")
    for image in (ws / "photos-class-unreadable" / "kind2").glob("*.png"):
        image.write_bytes(TEXT_AS_PNG)
    (ws / "class-empty" / "a").mkdir(parents=True)
    (ws / "class-empty" / "b").mkdir()
    shutil.copyfile(photos / "kind0" / "000.png", ws / "class-empty" / "a" / "000.png")


def _damaged_copies(ws: Path) -> None:
    shutil.copytree(ws / "model", ws / "model-truncated")
    weights = ws / "model-truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    shutil.copytree(ws / "model", ws / "model-bad-json")
    (ws / "model-bad-json" / "manifest.json").write_text("{not json")
    shutil.copytree(ws / "zoo", ws / "zoo-damaged")
    module = next((ws / "zoo-damaged" / "modules").iterdir()) / "module.safetensors"
    module.write_bytes(module.read_bytes()[:-10])


@pytest.fixture(scope="module")
def workspace(tiny_zoo, lite0, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("misuse")
    shutil.copytree(tiny_zoo.root, ws / "zoo")
    photos = write_image_folder(ws / "photos", per_class=6)
    assert main(["aggregate", "--zoo", str(ws / "zoo"), "--task", f"folder:{photos}", "--shots", "2", "--method",
                 "ens", "--out", str(ws / "model"), "--epochs", "1", "--no-progress"]) == 0
    from vimw.data import load_task

    data = load_task(f"folder:{photos}", shots=2)
    _lite1_twin(ws, tiny_zoo, data)
    _dense_model(ws, lite0)
    _bad_files(ws)
    _folders(ws)
    _damaged_copies(ws)
    return ws


# -- the misuse set: (argv, fragments the error line must hold); {ws} is the workspace ---------------
AGG = ["aggregate", "--zoo", "{ws}/zoo", "--out", "{ws}/new-model", "--no-progress"]
ENS = [*AGG, "--method", "ens", "--epochs", "1"]
TRAIN = ["zoo", "train", "--zoo", "{ws}/new-zoo", "--epochs", "1", "--image-size", str(IMAGE_SIZE), "--no-progress"]
IMAGE = "{ws}/photos/kind0/000.png"

CASES = {
    # a flag the chosen method would ignore
    "aggregate --method ridge_probe --lr": ([*AGG, "--task", "folder:{ws}/photos", "--method", "ridge_probe", "--lr",
                                             "0.01"], ["closed form", "lr does not apply"]),
    "aggregate --method ens --top-k 3": ([*ENS, "--task", "folder:{ws}/photos", "--top-k", "3"], ["top_k", "topk only"]),
    # numbers out of range, and not numbers
    "aggregate --shots 0": ([*AGG, "--task", "folder:{ws}/photos", "--shots", "0"], ["--shots", ">= 1"]),
    "aggregate --cv 1": ([*AGG, "--task", "folder:{ws}/photos", "--cv", "1"], ["--cv", ">= 2"]),
    "aggregate --steps 0": ([*AGG, "--task", "folder:{ws}/photos", "--steps", "0"], ["--steps"]),
    "aggregate --budget -5": ([*AGG, "--task", "folder:{ws}/photos", "--budget=-5"], ["--budget", "> 0"]),
    "aggregate --warmup-fraction 1.5": ([*AGG, "--task", "folder:{ws}/photos", "--warmup-fraction", "1.5"],
                                        ["--warmup-fraction", "<= 1"]),
    "aggregate --lr nan": ([*ENS, "--task", "folder:{ws}/photos", "--lr", "nan"], ["--lr", "finite"]),
    "zoo train --epochs 0": ([*TRAIN, "--task", "folder:{ws}/photos", "--epochs", "0"], ["--epochs"]),
    "zoo train --batch-size -1": ([*TRAIN, "--task", "folder:{ws}/photos", "--batch-size=-1"], ["--batch-size"]),
    "zoo train --lr abc": ([*TRAIN, "--task", "folder:{ws}/photos", "--lr", "abc"], ["--lr", "a number", "'abc'"]),
    "zoo build --jobs 0": (["zoo", "build", "--zoo", "{ws}/new-zoo", "--jobs", "0"], ["--jobs"]),
    "zoo rank --max-images 0": (["zoo", "rank", "--zoo", "{ws}/zoo", "--task", "folder:{ws}/photos",
                                 "--max-images", "0"], ["--max-images"]),
    "predict --top 0": (["predict", "--model", "{ws}/model", "--top", "0", IMAGE], ["--top", ">= 1, got 0"]),
    "predict --top -2": (["predict", "--model", "{ws}/model", "--top=-2", IMAGE], ["--top", "got -2"]),
    "demo --shots 0": (["demo", "--workdir", "{ws}/new-demo", "--shots", "0"], ["--shots"]),
    "serve --port 70000": (["serve", "--port", "70000"], ["--port", "<= 65535"]),
    "transfer apply --lambdas -1": (["transfer", "apply", "--adapter", "{ws}/a", "--out", "{ws}/b", "--lambdas=-1"],
                                    ["--lambdas"]),
    "transfer evaluate --blend 2": (["transfer", "evaluate", "--adapter", "{ws}/a", "--blend", "2"], ["--blend"]),
    # the parser's own errors
    "an unknown command": (["aggregat"], ["invalid choice: 'aggregat'"]),
    "an unknown option": (["zoo", "list", "--zoo", "{ws}/zoo", "--everything"], ["unrecognized arguments: --everything"]),
    "a required option missing": (["zoo", "train", "--task", "folder:{ws}/photos"], ["required", "--zoo"]),
    "an unknown method": ([*AGG, "--task", "folder:{ws}/photos", "--method", "best"], ["--method", "invalid choice"]),
    "an unknown export format": (["export", "--model", "{ws}/model", "--out", "{ws}/m.tflite", "--format", "tflite"],
                                 ["--format"]),
    # missing paths and the wrong kind of path
    "zoo list of a missing zoo": (["zoo", "list", "--zoo", "{ws}/no-zoo"], ["no zoo at {ws}/no-zoo"]),
    "zoo list of a file": (["zoo", "list", "--zoo", "{ws}/notes.txt"], ["notes.txt is a file", "a zoo is a directory"]),
    "zoo verify of a model": (["zoo", "verify", "--zoo", "{ws}/model"], ["is not a zoo", "downstream model"]),
    "zoo train into a file": ([*TRAIN[:2], "--zoo", "{ws}/notes.txt", "--task", "folder:{ws}/photos"],
                              ["notes.txt is a file"]),
    "zoo train under a file": ([*TRAIN[:2], "--zoo", "{ws}/notes.txt/zoo", "--task", "folder:{ws}/photos"],
                               ["notes.txt is a file, not a directory"]),
    "zoo diff with a file": (["zoo", "diff", "{ws}/zoo", "{ws}/notes.txt"], ["notes.txt is a file"]),
    "zoo import from a file": (["zoo", "import", "{ws}/notes.txt", "--zoo", "{ws}/new-zoo"], ["notes.txt is a file"]),
    "aggregate with a file as --zoo": (["aggregate", "--zoo", "{ws}/notes.txt", "--task", "folder:{ws}/photos",
                                        "--out", "{ws}/new-model"], ["notes.txt is a file"]),
    "evaluate a missing model": (["evaluate", "--model", "{ws}/no-model"], ["no downstream model at {ws}/no-model"]),
    "evaluate a file as the model": (["evaluate", "--model", "{ws}/notes.txt"], ["notes.txt is a file"]),
    "evaluate a folder without manifest": (["evaluate", "--model", "{ws}/no-manifest"], ["no manifest.json"]),
    "evaluate with a file as --zoo": (["evaluate", "--model", "{ws}/model", "--zoo", "{ws}/notes.txt"],
                                      ["notes.txt is a file"]),
    "predict with a file as --zoo": (["predict", "--model", "{ws}/model", "--zoo", "{ws}/notes.txt", IMAGE],
                                     ["notes.txt is a file"]),
    "export with a missing --zoo": (["export", "--model", "{ws}/model", "--out", "{ws}/m.onnx", "--zoo", "{ws}/no-zoo"],
                                    ["no zoo at"]),
    "predict a missing image": (["predict", "--model", "{ws}/model", "{ws}/nothing.png"], ["nothing.png"]),
    "an unknown task": ([*AGG, "--task", "no-such-task"], ["unknown task 'no-such-task'"]),
    "an unknown backbone": (["predict", "--backbone", "efficientnet_lite9", IMAGE], ["unknown backbone"]),
    "an unknown zoo module": ([*ENS, "--task", "folder:{ws}/photos", "--modules", "nope"], ["'nope'"]),
    "zoo remove of a missing module": (["zoo", "remove", "nope", "--zoo", "{ws}/zoo"], ["'nope'"]),
    "a path as a module name": (["zoo", "show", "../x", "--zoo", "{ws}/zoo"], ["invalid module name"]),
    "a missing recipe": (["aggregate", "--recipe", "{ws}/no-recipe.yaml"], ["no-recipe.yaml"]),
    # corrupt files
    "a text file renamed .png": (["predict", "--model", "{ws}/model", "{ws}/text.png"],
                                 ["text.png", "--skip-bad-images"]),
    "a corrupt .npz": ([*TRAIN, "--task", "npz:{ws}/corrupt.npz"], ["corrupt.npz"]),
    "a pickled .npz": ([*TRAIN, "--task", "npz:{ws}/pickled.npz"], ["pickled.npz", "pickle"]),
    "a truncated model file": (["evaluate", "--model", "{ws}/model-truncated"], ["model-truncated"]),
    "a model manifest that is not JSON": (["evaluate", "--model", "{ws}/model-bad-json"], ["manifest.json"]),
    "a zoo module changed on disk": (["evaluate", "--model", "{ws}/model", "--zoo", "{ws}/zoo-damaged"],
                                     ["zoo-damaged"]),
    "a recipe that is not YAML": (["aggregate", "--recipe", "{ws}/bad.yaml"], ["bad.yaml", "YAML"]),
    "a recipe that is a list": (["aggregate", "--recipe", "{ws}/list.yaml"], ["list.yaml", "mapping"]),
    "a recipe with an unknown key": (["aggregate", "--recipe", "{ws}/unknown-key.yaml", "--zoo", "{ws}/zoo",
                                      "--task", "folder:{ws}/photos", "--out", "{ws}/new-model"], ["shots_per_class"]),
    "a recipe with a negative number": (["aggregate", "--recipe", "{ws}/negative.yaml", "--zoo", "{ws}/zoo",
                                         "--task", "folder:{ws}/photos", "--out", "{ws}/new-model"], ["shots", "-3"]),
    # another backbone
    "a Lite1 model with a Lite0 zoo": (["evaluate", "--model", "{ws}/model-lite1", "--zoo", "{ws}/zoo"],
                                       ["backbone mismatch", "efficientnet_lite1", "efficientnet_lite0"]),
    "a Lite1 zoo imported into a Lite0 zoo": (["zoo", "import", "{ws}/zoo-lite1", "--zoo", "{ws}/zoo"], ["backbone"]),
    # outputs that exist
    "aggregate over an existing model": ([*ENS[:4], "{ws}/model", "--method", "ens", "--task", "folder:{ws}/photos"],
                                         ["already holds a model", "--overwrite"]),
    "export over an existing file": (["export", "--model", "{ws}/model", "--out", "{ws}/existing.onnx", "--format",
                                      "onnx"], ["existing.onnx already exists", "--overwrite"]),
    "export into a directory": (["export", "--model", "{ws}/model", "--out", "{ws}/export-dir"], ["is a directory"]),
    "zoo train over a taken name": (["zoo", "train", "--zoo", "{ws}/zoo", "--task", "folder:{ws}/photos", "--name",
                                     "syn-bands", "--epochs", "1"], ["syn-bands", "--overwrite"]),
    "report into a file": (["report", "--out", "{ws}/notes.txt", "--zoo", "{ws}/zoo"], ["notes.txt is a file"]),
    "an empty report": (["report", "--out", "{ws}/new-report"], ["nothing to report"]),
    "a report of a missing zoo": (["report", "--out", "{ws}/new-report", "--zoo", "{ws}/no-zoo"], ["no zoo at"]),
    "a report of a non-model": (["report", "--out", "{ws}/new-report", "--models", "{ws}/zoo"],
                                ["not a downstream model directory"]),
    # folders a model cannot be trained on
    "aggregate on one class": ([*ENS, "--task", "folder:{ws}/one-class"], ["1 class", "at least 2"]),
    "zoo train on one class": ([*TRAIN, "--task", "folder:{ws}/one-class"], ["1 class", "at least 2"]),
    "zoo rank on one class": (["zoo", "rank", "--zoo", "{ws}/zoo", "--task", "folder:{ws}/one-class"], ["at least 2"]),
    "aggregate on an empty folder": ([*ENS, "--task", "folder:{ws}/empty"], ["no class sub-folders"]),
    "aggregate on an empty class folder": ([*ENS, "--task", "folder:{ws}/class-empty"], ["class-empty/b", "no images"]),
    "more shots than a class has": ([*ENS, "--task", "folder:{ws}/photos", "--shots", "100"], ["100 shots"]),
    # unreadable images
    "aggregate on a folder with bad files": ([*ENS, "--task", "folder:{ws}/photos-bad", "--shots", "2"],
                                             ["photos-bad/kind", "--skip-bad-images"]),
    "zoo train on a folder with bad files": ([*TRAIN, "--task", "folder:{ws}/photos-bad"],
                                             ["photos-bad/kind", "--skip-bad-images"]),
    "evaluate on a folder with bad files": (["evaluate", "--model", "{ws}/model", "--task", "folder:{ws}/photos-bad"],
                                            ["photos-bad/kind", "--skip-bad-images"]),
    "zoo rank on a folder with bad files": (["zoo", "rank", "--zoo", "{ws}/zoo", "--task", "folder:{ws}/photos-bad"],
                                            ["photos-bad/kind", "--skip-bad-images"]),
    "a class of unreadable files, skipped": ([*ENS, "--task", "folder:{ws}/photos-class-unreadable", "--shots", "2",
                                              "--skip-bad-images"], ["kind2 contains no readable image"]),
    "predict with only unreadable files, skipped": (["predict", "--model", "{ws}/model", "--skip-bad-images",
                                                     "{ws}/text.png"], ["none of the 1 file(s)", "text.png"]),
    # what a method or model cannot do
    "predict with a dense model": (["predict", "--model", "{ws}/model-seg", IMAGE], ["segmentation", "evaluate"]),
    "a gated convpass model folded to safetensors": (["export", "--model", "{ws}/model", "--out", "{ws}/m.safetensors"],
                                                      ["lora"]),
    "--cv with one method": ([*ENS, "--task", "folder:{ws}/photos", "--cv", "3"], ["cv", "auto"]),
    "--lr under auto": ([*AGG, "--task", "folder:{ws}/photos", "--lr", "0.1"], ["lr", "--method NAME"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_misuse_gets_one_clear_line_and_loses_nothing(workspace, capsys, case):
    argv, fragments = CASES[case]
    before = snapshot(workspace)
    code, out, err = run(capsys, *(a.format(ws=workspace) for a in argv))
    line = assert_one_error_line(code, out, err)
    for fragment in fragments:
        assert fragment.format(ws=workspace) in line
    assert snapshot(workspace) == before


def test_the_misuse_set_has_at_least_49_cases():
    assert len(CASES) >= 49


def test_an_os_error_that_gets_through_is_one_line_naming_the_path(monkeypatch, capsys):
    import vimw.cli.data

    def denied(args):
        raise PermissionError(13, "Permission denied", "/srv/shared/zoo/index.json")

    monkeypatch.setattr(vimw.cli.data, "run_list", denied)
    code, out, err = run(capsys, "data", "list")
    assert assert_one_error_line(code, out, err) == "vimw: error: /srv/shared/zoo/index.json: Permission denied"


def test_zoo_verify_of_a_damaged_zoo_lists_the_problems_with_exit_1(workspace, capsys):
    before = snapshot(workspace)
    code, out, err = run(capsys, "zoo", "verify", "--zoo", workspace / "zoo-damaged")
    assert code == 1 and "Traceback" not in out + err
    assert "FAIL" in err and err.rstrip().endswith("1 problem(s)")
    assert snapshot(workspace) == before


# -- bad images skipped -----------------------------------------------------------------------------
def test_skip_bad_images_leaves_out_the_unreadable_files_saying_which(workspace, tmp_path, capsys, caplog):
    out = tmp_path / "model"
    with caplog.at_level("WARNING"):
        code, _, err = run(capsys, "aggregate", "--zoo", workspace / "zoo", "--task", f"folder:{workspace}/photos-bad",
                           "--shots", "2", "--method", "ens", "--epochs", "1", "--out", out, "--no-progress",
                           "--skip-bad-images")
    assert code == 0, err
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert warnings == [f"vimw: skipped 2 unreadable image file(s) in {workspace}/photos-bad: "
                        "kind1/broken.png, kind2/truncated.png"]
    assert (out / "manifest.json").is_file()


def test_predict_skips_bad_files_and_predicts_the_rest(workspace, capsys):
    code, out, err = run(capsys, "predict", "--model", workspace / "model", "--skip-bad-images", "--top", "2",
                         workspace / "text.png", workspace / "photos/kind0/000.png")
    assert code == 0, err
    assert out.splitlines()[0] == f"{workspace}/photos/kind0/000.png" and len(out.splitlines()) == 3
    assert err.strip() == f"vimw: skipped 1 unreadable image file(s): {workspace}/text.png"


# -- Ctrl-C during zoo train ------------------------------------------------------------------------
def _interrupt_training(monkeypatch, checkpoint: bool) -> None:
    import vimw.workflows.midstream as midstream

    def interrupted(model, data, config, *, checkpoint_dir, **kwargs):
        if checkpoint:  # as if one epoch had been saved
            (Path(checkpoint_dir) / "state.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(midstream, "fit", interrupted)


def test_ctrl_c_in_zoo_train_before_a_checkpoint_leaves_no_work_folder(zoo_copy, monkeypatch, capsys):
    _interrupt_training(monkeypatch, checkpoint=False)
    before = snapshot(zoo_copy.root)
    code, _, err = run(capsys, "zoo", "train", "--zoo", zoo_copy.root, "--task", f"npz:{_npz(zoo_copy.root.parent)}",
                       "--name", "new", "--image-size", IMAGE_SIZE, "--no-progress")
    assert code == 130 and err.strip().endswith("vimw: interrupted")
    assert snapshot(zoo_copy.root) == before  # no .work/new, no .work


def test_ctrl_c_in_zoo_train_keeps_a_checkpoint_for_resume(zoo_copy, monkeypatch, capsys):
    _interrupt_training(monkeypatch, checkpoint=True)
    code, _, _ = run(capsys, "zoo", "train", "--zoo", zoo_copy.root, "--task", f"npz:{_npz(zoo_copy.root.parent)}",
                     "--name", "new", "--image-size", IMAGE_SIZE, "--no-progress")
    assert code == 130
    assert (zoo_copy.root / ".work" / "new" / "state.json").is_file()
    assert "new" not in zoo_copy.names()


def _npz(directory: Path) -> Path:
    from conftest import write_npz

    return write_npz(directory / "task.npz", n=24)


# -- every numeric option of every command ----------------------------------------------------------
def _options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(sub-command path, action) for every option of every sub-command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif action.option_strings:
            yield path, action


def _out_of_range(bounds: tuple, kind: str) -> list[str]:
    minimum, maximum, strict = bounds
    values = ["abc"]
    if minimum is not None:
        values.append(f"{minimum:g}" if strict else f"{minimum - 1:g}")
    if maximum is not None:
        values.append(f"{maximum + 1:g}")
    if kind == "float":
        values += ["nan", "inf"]
    return values


@pytest.fixture(scope="module")
def every_option():
    return list(_options(build_parser()))


def test_no_numeric_option_is_a_bare_int_or_float(every_option):
    bare = [f"{' '.join(path)} {action.option_strings[-1]}" for path, action in every_option
            if action.type in (int, float)
            or (action.type is None and type(action.default) in (int, float) and action.nargs != 0)]
    assert bare == []


def test_every_numeric_option_refuses_out_of_range_values_in_one_line(every_option, capsys):
    tried = 0
    for path, action in every_option:
        bounds = getattr(action.type, "bounds", None)
        if bounds is None:
            continue
        option = action.option_strings[-1]
        for value in _out_of_range(bounds, action.type.__name__):
            code, out, err = run(capsys, *path, f"{option}={value}")
            line = assert_one_error_line(code, out, err)
            assert line.startswith(f"vimw: error: argument {'/'.join(action.option_strings)}: "), (path, value, line)
            tried += 1
    assert tried > 100  # every command's numbers were tried, not a handful

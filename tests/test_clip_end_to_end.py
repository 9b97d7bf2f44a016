"""The whole ViM chain from the command line on a tiny random CLIP vision tower (no download).

``vimw zoo train`` (two midstream tasks, two sites per transformer block) ->
``vimw aggregate`` (few-shot, per-site gates) -> ``vimw evaluate`` -> ``vimw predict``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from conftest import write_image_folder, write_npz  # noqa: E402
from vimw.backbones import create_backbone  # noqa: E402
from vimw.backbones.hf_clip import TINY_CONFIG, save_tiny_clip  # noqa: E402
from vimw.cli.main import main  # noqa: E402
from vimw.zoo import Zoo  # noqa: E402

TRAIN = ["--epochs", "1", "--batch-size", "16", "--lr", "0.01", "--no-progress"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_tiny_clip_zoo_aggregate_evaluate_predict(tmp_path, capsys):
    clip_dir = save_tiny_clip(tmp_path / "tiny-clip", seed=0)
    backbone = f"hf:{clip_dir}"
    zoo_dir, model_dir = tmp_path / "zoo", tmp_path / "model"

    # Two midstream modules on two synthetic npz tasks, at 32 px (4x4 patches of 8 px).
    for name, pattern in (("bands", "bands"), ("dots", "dots")):
        npz = write_npz(tmp_path / f"{pattern}.npz", n=48, pattern=pattern)
        code, out, err = run(capsys, "zoo", "train", "--zoo", zoo_dir, "--task", f"npz:{npz}", "--name", name,
                             "--backbone", backbone, "--image-size", 32, *TRAIN)
        assert code == 0, err
        assert out.startswith(f"added {name} (convpass")

    zoo = Zoo(zoo_dir)
    assert zoo.verify() == []
    sites = create_backbone(backbone, image_size=32).sites
    assert len(sites) == 2 * TINY_CONFIG["num_hidden_layers"]  # the paper's two sites per block
    assert [s.name for s in sites] == ["layer00_attn", "layer00_mlp", "layer01_attn", "layer01_mlp"]
    for name in ("bands", "dots"):
        manifest = zoo.manifest(name)
        assert manifest.backbone["arch"] == f"hf:{clip_dir.name}" and manifest.backbone["image_size"] == 32
        assert manifest.num_parameters > 0

    folder = write_image_folder(tmp_path / "photos", per_class=6, classes=3)
    code, out, err = run(capsys, "aggregate", "--zoo", zoo_dir, "--task", f"folder:{folder}", "--shots", 2,
                         "--out", model_dir, "--epochs", 2, "--no-progress")
    assert code == 0, err
    assert out.startswith("ens on folder:")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert [m["name"] for m in manifest["zoo"]["modules"]] == ["bands", "dots"]
    assert (model_dir / "gates.png").stat().st_size > 0
    # The effective recipes: the zoo records the backbone's directory, which aggregation found by itself.
    zoo_recipe = json.loads((zoo_dir / "recipe.json").read_text())
    assert zoo_recipe["zoo"]["backbone"] == f"hf:{clip_dir.resolve()}"
    assert [m["name"] for m in zoo_recipe["zoo"]["modules"]] == ["bands", "dots"]
    model_recipe = json.loads((model_dir / "recipe.json").read_text())
    assert model_recipe["aggregate"]["backbone"] == f"hf:{clip_dir.resolve()}" and model_recipe["aggregate"]["shots"] == 2
    assert manifest["backbone"]["source"] == f"hf:{clip_dir.resolve()}"

    code, out, err = run(capsys, "evaluate", "--model", model_dir, "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert 0.0 <= metrics["accuracy"] <= 1.0

    image = sorted((Path(folder) / "kind1").glob("*.png"))[0]
    code, out, err = run(capsys, "predict", "--model", model_dir, image)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == str(image) and len(lines) == 4
    assert {line.split()[-1] for line in lines[1:]} == {"kind0", "kind1", "kind2"}

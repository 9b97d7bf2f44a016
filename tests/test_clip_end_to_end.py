"""The whole ViM chain from the command line on a tiny random CLIP vision tower (no download).

``vimw zoo train`` (two midstream tasks, two sites per transformer block) ->
``vimw aggregate`` (few-shot, per-site gates) -> ``vimw evaluate`` -> ``vimw predict``.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from helpers.cli_chain import zoo_aggregate_evaluate  # noqa: E402
from vimw.backbones import create_backbone  # noqa: E402
from vimw.backbones.hf_clip import TINY_CONFIG, save_tiny_clip  # noqa: E402
from vimw.zoo import Zoo  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_tiny_clip_zoo_aggregate_evaluate_predict(tmp_path, capsys):
    clip_dir = save_tiny_clip(tmp_path / "tiny-clip", seed=0)
    backbone = f"hf:{clip_dir}"
    # Two midstream modules on two synthetic npz tasks, at 32 px (4x4 patches of 8 px).
    chain = zoo_aggregate_evaluate(tmp_path, capsys, backbone, image_size=32, modules=("bands", "dots"))
    zoo_dir, model_dir = chain.zoo_dir, chain.model_dir

    zoo = Zoo(zoo_dir)
    assert zoo.verify() == []
    sites = create_backbone(backbone, image_size=32).sites
    assert len(sites) == 2 * TINY_CONFIG["num_hidden_layers"]  # the paper's two sites per block
    assert [s.name for s in sites] == ["layer00_attn", "layer00_mlp", "layer01_attn", "layer01_mlp"]
    for name in ("bands", "dots"):
        manifest = zoo.manifest(name)
        assert manifest.kind == "convpass"
        assert manifest.backbone["arch"] == f"hf:{clip_dir.name}" and manifest.backbone["image_size"] == 32
        assert manifest.num_parameters > 0

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

"""The workflows behind the commands: one writer of downstream models, whoever calls it."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import write_npz
from vimw.cli.main import main
from vimw.workflows.aggregate import AggregateSettings, aggregate
from vimw.workflows.compare import SearchSettings
from vimw.workflows.demo import DemoSettings, step_aggregation
from vimw.zoo import Zoo


def _keys(manifest: dict) -> dict:
    """The manifest's shape: its keys, and the keys of its nested records."""
    return {"top": sorted(manifest), **{k: sorted(v) for k, v in manifest.items()
                                         if k in ("metrics", "training", "task", "backbone", "head")}}


def test_the_cli_the_demo_and_the_api_write_the_same_manifest(tiny_zoo, tmp_path):
    npz = write_npz(tmp_path / "bands.npz", n=60)
    search = SearchSettings(steps=2, augment=False)
    api = aggregate(AggregateSettings(zoo=str(tiny_zoo.root), task=f"npz:{npz}", shots=3, out=str(tmp_path / "api"),
                                      method="linear_probe", search=search))
    assert main(["aggregate", "--zoo", str(tiny_zoo.root), "--task", f"npz:{npz}", "--shots", "3", "--method",
                 "linear_probe", "--steps", "2", "--no-augment", "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    demo = DemoSettings(workdir=str(tmp_path / "demo"), task=f"npz:{npz}", shots=3, steps=2)
    shutil.copytree(tiny_zoo.root, demo.zoo_dir)
    step_aggregation(demo, Zoo(demo.zoo_dir), say=lambda line: None)
    written = {name: json.loads((path / "manifest.json").read_text()) for name, path in
               (("cli", tmp_path / "cli"), ("demo", tmp_path / "demo" / "models" / "linear_probe"))}
    assert _keys(written["cli"]) == _keys(written["demo"]) == _keys(api.manifest)
    assert written["cli"]["metrics"]["test_score"] == pytest.approx(api.manifest["metrics"]["test_score"])


def test_aggregate_refuses_to_replace_a_model_unless_asked(tiny_zoo, tmp_path):
    npz = write_npz(tmp_path / "bands.npz", n=60)
    settings = AggregateSettings(zoo=str(tiny_zoo.root), task=f"npz:{npz}", shots=3, out=str(tmp_path / "m"),
                                 method="linear_probe", search=SearchSettings(steps=2, augment=False))
    aggregate(settings)
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    with pytest.raises(Exception, match="--overwrite"):
        aggregate(settings)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    aggregate(settings.replace(search=settings.search.replace(seed=1)), overwrite=True)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() != before


def test_a_failed_first_run_leaves_no_directory_behind(tiny_zoo, tmp_path):
    from vimw.errors import VimwError

    with pytest.raises(VimwError, match="no-such-task"):  # fails after taking the model's lock
        aggregate(AggregateSettings(zoo=str(tiny_zoo.root), task="no-such-task", out=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()
    with pytest.raises(VimwError, match="no zoo"):
        aggregate(AggregateSettings(zoo=str(tmp_path / "none"), task="t", out=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()

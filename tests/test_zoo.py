"""The zoo on disk: add/list/show/verify/remove, isolation, integrity, backbone checks, names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import ZOO_MODULES
from vimw.errors import BackboneMismatchError, FormatError, IntegrityError
from vimw.modules import ConvpassConfig, LoRAConfig, ModuleSet
from vimw.zoo import ModuleManifest, Zoo, ZooError, check_module_name, verify_or_raise
from vimw.zoo import store


def new_manifest(name: str, backbone, module: ModuleSet) -> ModuleManifest:
    return ModuleManifest(
        name=name,
        module=module.config.to_dict(),
        backbone={"arch": backbone.arch, "fingerprint": backbone.fingerprint(), "image_size": backbone.preprocess.size},
        task={"name": "synthetic", "dataset": "synthetic", "kind": "classification"},
        weights={},
        metrics={"val_score": 0.5},
    )


def random_module(backbone, kind: str = "convpass", seed: int = 0) -> ModuleSet:
    torch.manual_seed(seed)
    config = ConvpassConfig() if kind == "convpass" else LoRAConfig()
    module = ModuleSet.create(config, backbone.sites)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.05)
    return module


def add_module(zoo: Zoo, name: str, backbone, seed: int = 0) -> ModuleSet:
    module = random_module(backbone, seed=seed)
    zoo.add(new_manifest(name, backbone, module), module)
    return module


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in root.rglob("*")
        if p.is_file()
    }


def flip_one_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# -- the life cycle ------------------------------------------------------------------------
def test_trained_zoo_lists_every_module_from_the_index(tiny_zoo):
    rows = tiny_zoo.list()
    assert [name for name, _ in rows] == sorted(ZOO_MODULES) == tiny_zoo.names()
    for name, entry in rows:
        assert entry["kind"] == "convpass" and entry["backbone"] == "efficientnet_lite0"
        assert entry["sha256"] == tiny_zoo.manifest(name).weights["sha256"]
    assert [n for n, _ in tiny_zoo.list(kind="lora")] == []
    assert [n for n, _ in tiny_zoo.list(task="dots")] == ["syn-dots"]


def test_manifest_records_what_a_module_is(tiny_zoo, lite0):
    manifest = tiny_zoo.manifest("syn-bands")
    assert manifest.kind == "convpass" and manifest.module["hidden_dim"] == 8
    assert manifest.backbone == {"arch": "efficientnet_lite0", "source": "efficientnet_lite0",
                                 "fingerprint": lite0.fingerprint(), "image_size": 40}
    assert manifest.task["kind"] == "classification" and manifest.task["num_classes"] == 3
    assert 0.0 <= manifest.metrics["val_score"] <= 1.0 and "test_accuracy" in manifest.metrics
    assert manifest.training["epochs"] == 1 and len(manifest.training["history"]) == 1
    assert manifest.num_parameters == tiny_zoo.load("syn-bands", lite0).num_parameters()
    assert manifest.num_parameters < 0.02 * lite0.num_parameters()
    assert manifest.vimw_version and manifest.created


def test_trained_zoo_verifies(tiny_zoo):
    assert tiny_zoo.verify() == []
    verify_or_raise(tiny_zoo)


def test_load_gives_the_saved_weights(tiny_zoo, lite0):
    module = tiny_zoo.load("syn-blocks", lite0)
    from vimw.io import load_tensors

    saved = load_tensors(tiny_zoo.module_dir("syn-blocks") / "module.safetensors")
    assert saved.keys() == module.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in module.state_dict().items())


def test_remove_deletes_the_module_and_its_index_entry(zoo_copy):
    zoo_copy.remove("syn-dots")
    assert zoo_copy.names() == ["syn-bands", "syn-blocks"]
    assert not zoo_copy.module_dir("syn-dots").exists()
    assert zoo_copy.verify() == []
    with pytest.raises(ZooError, match="syn-dots"):
        zoo_copy.manifest("syn-dots")
    with pytest.raises(ZooError, match="syn-dots"):
        zoo_copy.remove("syn-dots")


def test_adding_a_taken_name_is_refused_without_overwrite(tmp_path, lite0):
    zoo = Zoo(tmp_path / "zoo")
    first = add_module(zoo, "taken", lite0, seed=0)
    with pytest.raises(ZooError, match="taken"):
        add_module(zoo, "taken", lite0, seed=1)
    loaded = zoo.load("taken", lite0)
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_adding_a_module_writes_only_its_files_and_the_index(tmp_path, lite0):
    zoo = Zoo(tmp_path / "zoo")
    add_module(zoo, "first", lite0, seed=0)
    before = snapshot(zoo.root)

    add_module(zoo, "second", lite0, seed=1)

    after = snapshot(zoo.root)
    changed = {p for p in before if p in after and after[p] != before[p]}
    added = set(after) - set(before)
    assert set(before) - set(after) == set()
    assert changed <= {"index.json", ".lock"}
    assert added == {"modules/second/module.safetensors", "modules/second/manifest.json", "modules/second/README.md"}
    assert {p for p in before if p.startswith("modules/first/")} == {
        "modules/first/module.safetensors", "modules/first/manifest.json", "modules/first/README.md"}
    assert zoo.names() == ["first", "second"] and zoo.verify() == []


def test_module_is_invisible_until_completely_written(tmp_path, lite0, monkeypatch):
    zoo = Zoo(tmp_path / "zoo")
    add_module(zoo, "present", lite0)
    seen = []
    real_save = store.save_tensors

    def save_and_look(path, tensors, *args, **kwargs):
        digest = real_save(path, tensors, *args, **kwargs)
        seen.append((zoo.names(), zoo.module_dir("incoming").exists(), zoo.verify()))
        return digest

    monkeypatch.setattr(store, "save_tensors", save_and_look)
    add_module(zoo, "incoming", lite0, seed=1)
    assert seen == [(["present"], False, [])]
    assert zoo.names() == ["incoming", "present"]


def test_failed_add_leaves_no_trace(tmp_path, lite0, monkeypatch):
    zoo = Zoo(tmp_path / "zoo")
    add_module(zoo, "present", lite0)
    before = snapshot(zoo.root / "modules")
    real_write = store.write_json

    def crash_on_manifest(path, payload):
        if Path(path).name == "manifest.json":
            raise OSError("disk full")
        return real_write(path, payload)

    monkeypatch.setattr(store, "write_json", crash_on_manifest)
    with pytest.raises(OSError, match="disk full"):
        add_module(zoo, "broken", lite0, seed=1)
    monkeypatch.undo()
    assert zoo.names() == ["present"] and zoo.verify() == []
    assert snapshot(zoo.root / "modules") == before
    staging = zoo.root / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


# -- integrity ------------------------------------------------------------------------------
def test_edited_weights_byte_fails_verify(zoo_copy):
    weights = zoo_copy.module_dir("syn-blocks") / "module.safetensors"
    flip_one_byte(weights)
    problems = zoo_copy.verify()
    assert len(problems) == 1
    assert "syn-blocks" in problems[0] and "sha256" in problems[0]
    with pytest.raises(IntegrityError, match="syn-blocks"):
        verify_or_raise(zoo_copy)


def test_edited_weights_byte_is_refused_by_load(zoo_copy, lite0):
    flip_one_byte(zoo_copy.module_dir("syn-blocks") / "module.safetensors")
    with pytest.raises(IntegrityError, match="sha256"):
        zoo_copy.load("syn-blocks", lite0)
    zoo_copy.load("syn-bands", lite0)  # the others still load


def test_missing_module_directory_fails_verify(zoo_copy):
    import shutil

    shutil.rmtree(zoo_copy.module_dir("syn-bands"))
    problems = zoo_copy.verify()
    assert len(problems) == 1 and "syn-bands" in problems[0] and "missing" in problems[0]


def test_unindexed_module_directory_fails_verify(zoo_copy):
    (zoo_copy.root / "modules" / "stray").mkdir()
    problems = zoo_copy.verify()
    assert len(problems) == 1 and "stray" in problems[0]


def test_lite0_module_is_refused_by_lite2(tiny_zoo, lite2):
    with pytest.raises(BackboneMismatchError) as excinfo:
        tiny_zoo.load("syn-bands", lite2)
    message = str(excinfo.value)
    assert "efficientnet_lite0" in message and "efficientnet_lite2" in message and "syn-bands" in message


# -- manifests and names ----------------------------------------------------------------------
def test_manifest_round_trips_through_json(tiny_zoo):
    manifest = tiny_zoo.manifest("syn-dots")
    again = ModuleManifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again == manifest
    on_disk = json.loads((tiny_zoo.module_dir("syn-dots") / "manifest.json").read_text())
    assert ModuleManifest.from_dict(on_disk) == manifest


def test_manifest_from_a_newer_format_is_refused(tiny_zoo):
    payload = tiny_zoo.manifest("syn-dots").to_dict()
    payload["format"] = 99
    with pytest.raises(FormatError, match="newer"):
        ModuleManifest.from_dict(payload)


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", ".hidden", "", "x" * 101, "a\\b", "/abs"])
def test_unsafe_module_names_are_refused(name, tmp_path, lite0):
    with pytest.raises(FormatError, match="invalid module name"):
        check_module_name(name)
    zoo = Zoo(tmp_path / "zoo")
    module = random_module(lite0)
    with pytest.raises(FormatError):
        zoo.add(new_manifest(name, lite0, module), module)
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["zoo"])
    assert not (tmp_path / "x").exists() and zoo.names() == []


@pytest.mark.parametrize("name", ["a", "fmnist-apparel", "mnist_digits.v2", "A1"])
def test_ordinary_module_names_are_accepted(name):
    assert check_module_name(name) == name

"""Sharing zoos: import (checks, conflicts, no-op repeats, SIGKILL at every write point), diff, module cards."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers.reliability import (
    FINGERPRINT,
    FakeBackbone,
    add_tiny,
    file_digests,
    install_kill,
    listing,
    tiny_manifest,
    tiny_module,
)
from vimw.cli.main import main
from vimw.errors import BackboneMismatchError, IntegrityError
from vimw.zoo import Zoo, ZooError
from vimw.io.names import MODULE_CARD_FILE as CARD_FILE
from vimw.zoo.share import diff_zoos, import_modules, parse_renames
from vimw.zoo.store import MODULES_DIR

OTHER_FINGERPRINT = "e" * 64


def zoo_with(root: Path, *specs) -> Zoo:
    """A zoo holding tiny modules: specs are (name, seed) or (name, seed, fingerprint)."""
    zoo = Zoo(root)
    for spec in specs:
        name, seed, *rest = spec
        if rest:
            zoo.add(tiny_manifest(name, fingerprint=rest[0]), tiny_module(seed))
        else:
            add_tiny(zoo, name, seed)
    return zoo


@pytest.fixture
def source(tmp_path) -> Zoo:
    return zoo_with(tmp_path / "src", ("shared-a", 1), ("shared-b", 2))


def test_import_copies_modules_byte_for_byte_with_cards(source, tmp_path):
    dst = zoo_with(tmp_path / "dst", ("mine", 3))
    report = import_modules(source.root, dst.root)
    assert sorted(report.imported) == [("shared-a", "shared-a"), ("shared-b", "shared-b")]
    assert dst.names() == ["mine", "shared-a", "shared-b"] and dst.verify() == []
    for name in ("shared-a", "shared-b"):
        for filename in ("module.safetensors", "head.safetensors"):
            assert (dst.module_dir(name) / filename).read_bytes() == (source.module_dir(name) / filename).read_bytes()
        assert dst.read_index()[name]["sha256"] == source.read_index()[name]["sha256"]
        card = (dst.module_dir(name) / CARD_FILE).read_text()
        assert f"# {name}" in card and FINGERPRINT in card and "synthetic" in card
        assert dst.load(name, FakeBackbone()).num_parameters() > 0


def test_repeated_import_is_a_no_op(source, tmp_path):
    dst = Zoo(tmp_path / "dst")
    import_modules(source.root, dst.root)
    before = listing(dst.root)
    report = import_modules(source.root, dst.root)
    assert report.imported == [] and len(report.unchanged) == 2
    assert listing(dst.root) == before


def test_import_refuses_a_module_for_another_backbone(source, tmp_path):
    dst = zoo_with(tmp_path / "dst", ("theirs", 5, OTHER_FINGERPRINT))
    before = listing(dst.root)
    with pytest.raises(BackboneMismatchError, match="shared-a.*fake-net.*nothing imported"):
        import_modules(source.root, dst.root)
    assert listing(dst.root) == before
    # Modules of two backbones cannot start a zoo together either.
    mixed = zoo_with(tmp_path / "mixed", ("x", 1), ("y", 2, OTHER_FINGERPRINT))
    with pytest.raises(BackboneMismatchError, match="different backbones"):
        import_modules(mixed.root, tmp_path / "empty")
    assert not (tmp_path / "empty" / "index.json").exists()


def test_import_refuses_a_name_conflict_and_rename_resolves_it(source, tmp_path):
    dst = zoo_with(tmp_path / "dst", ("shared-a", 9))  # same name, other weights
    before = listing(dst.root)
    with pytest.raises(ZooError, match="already has a module named 'shared-a' with other weights.*--rename"):
        import_modules(source.root, dst.root)
    assert listing(dst.root) == before
    report = import_modules(source.root, dst.root, renames=parse_renames(["shared-a=shared-a2"]))
    assert sorted(report.imported) == [("shared-a", "shared-a2"), ("shared-b", "shared-b")]
    assert dst.manifest("shared-a2").name == "shared-a2" and dst.verify() == []
    assert import_modules(source.root, dst.root, renames={"shared-a": "shared-a2"}).imported == []


def test_import_refuses_a_corrupt_source_module(source, tmp_path):
    weights = source.module_dir("shared-b") / "module.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(IntegrityError, match="shared-b.*sha256"):
        import_modules(source.root, tmp_path / "dst", ["shared-a", "shared-b"])
    assert not (tmp_path / "dst" / "index.json").exists()


@pytest.mark.parametrize("bad, fragment", [
    (["missing"], "no module"), (None, "is not a zoo"),
])
def test_import_refuses_unknown_modules_and_non_zoos(source, tmp_path, bad, fragment):
    src = source.root if bad else tmp_path / "nothing"
    (tmp_path / "nothing").mkdir(exist_ok=True)
    with pytest.raises(ZooError, match=fragment):
        import_modules(src, tmp_path / "dst", bad)


def test_diff_says_which_modules_differ(source, tmp_path):
    other = zoo_with(tmp_path / "other", ("shared-a", 1), ("shared-b", 7), ("extra", 8))
    import_modules(source.root, tmp_path / "copy", ["shared-a"], {"shared-a": "alias"})
    result = diff_zoos(source.root, other.root)
    assert result["same"] == ["shared-a"] and result["different"] == ["shared-b"]
    assert result["only_a"] == [] and result["only_b"] == ["extra"]
    renamed = diff_zoos(source.root, tmp_path / "copy")
    assert renamed["renamed"] == [("shared-a", "alias")] and renamed["only_a"] == ["shared-b"]


def test_cli_import_diff_and_card(source, tmp_path, capsys):
    dst = tmp_path / "dst"
    assert main(["zoo", "import", str(source.root), "--zoo", str(dst), "--modules", "shared-a",
                 "--rename", "shared-a=a2"]) == 0
    assert "imported shared-a as a2" in capsys.readouterr().out
    assert main(["zoo", "import", str(source.root), "--zoo", str(dst), "--modules", "shared-a",
                 "--rename", "shared-a=a2"]) == 0
    assert "0 module(s) imported, 1 already present" in capsys.readouterr().out
    assert main(["zoo", "diff", str(source.root), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "renamed    shared-a -> a2" in out and "only in A  shared-b" in out
    (Zoo(dst).module_dir("a2") / CARD_FILE).unlink()
    assert main(["zoo", "card", "--zoo", str(dst)]) == 0
    assert (Zoo(dst).module_dir("a2") / CARD_FILE).is_file()
    assert main(["zoo", "import", str(source.root), "--zoo", str(dst), "--rename", "nonsense"]) != 0
    assert "OLD=NEW" in capsys.readouterr().err


def _killed_import(src: Path, dst: Path, function: str, when: str, k: int, report: Path) -> bool:
    report.unlink(missing_ok=True)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            install_kill(function, when, k, report)
            import_modules(src, dst)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == 9 and report.exists()
        return True
    assert os.WEXITSTATUS(status) == 0, "the import failed in the child without being killed"
    return False


def test_sigkill_at_every_write_point_of_an_import_leaves_the_old_or_the_new_zoo(source, tmp_path):
    pristine = zoo_with(tmp_path / "pristine", ("mine", 3))
    kept = file_digests(pristine.root / MODULES_DIR)
    old, new = {"mine"}, {"mine", "shared-a", "shared-b"}
    report, points = tmp_path / "killed.txt", []
    for function, when in (("replace", "before"), ("replace", "after"), ("fsync", "before")):
        k = 1
        while True:
            root = tmp_path / f"dst-{function}-{when}-{k}"
            shutil.copytree(pristine.root, root)
            if not _killed_import(source.root, root, function, when, k, report):
                break
            points.append(report.read_text())
            zoo = Zoo(root)
            assert set(zoo.names()) in (old, new)  # readers see one state or the other, before any repair
            zoo.repair()
            assert zoo.verify() == [] and zoo.leftovers() == []
            assert old <= set(zoo.names()) <= new  # whole modules only
            assert {k2: v for k2, v in file_digests(root / MODULES_DIR).items() if k2.startswith("mine/")} == kept
            for name in zoo.names():
                zoo.load(name, FakeBackbone())
            import_modules(source.root, root)  # the same import again completes it
            assert set(zoo.names()) == new and zoo.verify() == []
            shutil.rmtree(root)
            k += 1
    assert any("index.json" in p for p in points) and any(".staging" in p for p in points)
    assert len(points) >= 6, points


def test_a_trained_module_has_a_card_from_its_manifest(tiny_zoo):
    manifest = tiny_zoo.manifest("syn-bands")
    card = (tiny_zoo.module_dir("syn-bands") / CARD_FILE).read_text()
    assert card.startswith("---\nlibrary_name: vimw\n") and "# syn-bands" in card
    for fact in (manifest.task["dataset"], f"{manifest.num_parameters:,} parameters", manifest.fingerprint,
                 "efficientnet_lite0", f"val_score {manifest.metrics['val_score']:.4f}",
                 f"{manifest.task['train_images']} train", "bands0, bands1, bands2"):
        assert fact in card, fact

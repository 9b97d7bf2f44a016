"""Reliability of the zoo on disk: concurrent writers, SIGKILL at every write point, repair.

Crash tests fork a child that SIGKILLs itself at the k-th ``os.replace`` / ``os.fsync``
call of one zoo operation (before or after the call), for every k the operation makes:
every rename and every flushed write of ``Zoo.add`` (new module, and replacing one),
``Zoo.remove`` and the index update inside them. After each kill the zoo must show the
old state or the new one, never a partial module, and be sound after ``repair()``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.reliability import (
    FakeBackbone,
    add_tiny,
    file_digests,
    install_kill,
    listing,
    report_counts,
    tiny_manifest,
    tiny_module,
)
from vimw.cli.main import main
from vimw.io import load_tensors
from vimw.zoo import Zoo, ZooError
from vimw.zoo.store import MODULES_DIR, STAGING_DIR, TRASH_DIR

WORKER = Path(__file__).parent / "helpers" / "reliability_worker.py"
COUNTS = {"crash points": 0, "concurrent writers": 0, "modules added concurrently": 0}


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    report_counts(request.config, "zoo", COUNTS)


def _seed_zoo(root: Path) -> Zoo:
    zoo = Zoo(root)
    add_tiny(zoo, "old-a", seed=1)
    add_tiny(zoo, "old-b", seed=2, head=False)
    return zoo


def _module_files(root: Path, names) -> dict[str, str]:
    return {k: v for k, v in file_digests(root / MODULES_DIR).items() if k.split("/")[0] in names}


def _check_sound(zoo: Zoo, allowed_states: list[set[str]], preserved: dict[str, str]) -> set[str]:
    names = set(zoo.names())
    assert names in allowed_states, f"zoo shows {sorted(names)}, expected one of {allowed_states}"
    assert zoo.verify() == []
    assert zoo.leftovers() == []
    staging = zoo.root / STAGING_DIR
    assert not staging.exists() or not any(staging.iterdir())
    trash = zoo.root / TRASH_DIR
    assert not trash.exists() or not any(trash.iterdir())
    # Modules other than the one being written are byte-identical.
    assert _module_files(zoo.root, preserved_names(preserved)) == preserved
    for name in names:  # every visible module loads, checksum and shapes checked
        assert zoo.load(name, FakeBackbone()).num_parameters() > 0
    return names


def preserved_names(preserved: dict[str, str]) -> set[str]:
    return {k.split("/")[0] for k in preserved}


def _run_killed(operation, function: str, when: str, k: int, report: Path) -> bool:
    """Run ``operation`` in a forked child killed at the k-th call; True if it was killed."""
    report.unlink(missing_ok=True)
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            install_kill(function, when, k, report)
            operation()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == 9
        assert report.exists()
        return True
    assert os.WEXITSTATUS(status) == 0, "the operation failed in the child without being killed"
    return False


SCENARIOS = {
    # name: (operation on a seeded zoo, zoo states allowed after the crash, modules that must stay byte-identical)
    "add-new": (lambda zoo: add_tiny(zoo, "new", seed=3), [{"old-a", "old-b"}, {"old-a", "old-b", "new"}],
                ("old-a", "old-b")),
    "add-replace": (lambda zoo: add_tiny(zoo, "old-a", seed=4, overwrite=True), [{"old-a", "old-b"}],
                    ("old-b",)),
    "remove": (lambda zoo: zoo.remove("old-a"), [{"old-a", "old-b"}, {"old-b"}], ("old-b",)),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_sigkill_at_every_write_point_leaves_old_or_new_state(tmp_path, scenario):
    operation, allowed, keep = SCENARIOS[scenario]
    pristine = tmp_path / "pristine"
    _seed_zoo(pristine)
    preserved = _module_files(pristine, keep)
    old_a = _module_files(pristine, ("old-a",))
    report = tmp_path / "killed.txt"
    points = []
    for function, when in (("replace", "before"), ("replace", "after"), ("fsync", "before")):
        k = 1
        while True:
            root = tmp_path / f"zoo-{function}-{when}-{k}"
            shutil.copytree(pristine, root)
            zoo = Zoo(root)
            if not _run_killed(lambda: operation(zoo), function, when, k, report):
                break  # the operation makes fewer than k such calls: every point was tried
            points.append(report.read_text())
            before_repair = set(zoo.names())
            assert before_repair in allowed  # readers never see a partial module, even before repair
            problems = zoo.verify()
            # What a kill can leave for verify: a complete module renamed into place whose
            # index update never happened (a new name, or a replaced one), or a replaced /
            # removed module moved to the trash before the index moved on.
            assert all(
                "not in the index" in p or "is missing" in p or "record different sha256" in p for p in problems
            ), problems
            zoo.repair()
            names = _check_sound(zoo, allowed, preserved)
            if scenario == "add-replace":
                # Old copy or new copy, each whole.
                now = _module_files(root, ("old-a",))
                new_weights = load_tensors(root / MODULES_DIR / "old-a" / "module.safetensors")
                new = tiny_module(4).state_dict()
                assert now == old_a or all(torch.equal(new_weights[k], v) for k, v in new.items())
            # The zoo still takes writes: no stale lock, no name blocked by an orphan.
            add_tiny(zoo, "after", seed=9)
            assert "after" in zoo.names() and zoo.verify() == []
            shutil.rmtree(root)
            k += 1
    COUNTS["crash points"] += len(points)
    assert any("index.json" in p for p in points), "no kill hit the index update"
    if scenario.startswith("add"):
        assert any(STAGING_DIR in p for p in points), "no kill hit the staging write"
    else:
        assert any(TRASH_DIR in p for p in points), "no kill hit the move to the trash"
    assert len(points) >= 5, points


def test_four_processes_adding_five_modules_each(tmp_path):
    root = tmp_path / "zoo"
    go = tmp_path / "go"
    writers = [
        subprocess.Popen([sys.executable, str(WORKER), "add", str(root), f"w{i}", "5", str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(4)
    ]
    time.sleep(0.5)
    go.touch()
    for process in writers:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err.decode()[-2000:]
    zoo = Zoo(root)
    expected = {f"w{i}-{j}" for i in range(4) for j in range(5)}
    assert set(zoo.names()) == expected and len(zoo) == 20
    assert zoo.verify() == [] and zoo.leftovers() == []
    assert sorted(p.name for p in (root / MODULES_DIR).iterdir()) == sorted(expected)
    for name in expected:
        zoo.load(name, FakeBackbone())
        assert zoo.read_index()[name]["sha256"] == zoo.manifest(name).weights["sha256"]
    COUNTS["concurrent writers"] += len(writers)
    COUNTS["modules added concurrently"] += len(expected)


def test_repair_cleans_staging_of_dead_writers_but_not_live_ones(tmp_path):
    zoo = _seed_zoo(tmp_path / "zoo")
    before = file_digests(zoo.root / MODULES_DIR)
    # A dead writer: staging dir + owner file, nobody holds the lock.
    dead = zoo.root / STAGING_DIR / "ghost.0123"
    dead.mkdir(parents=True)
    (dead / "module.safetensors").write_bytes(b"half")
    (dead.parent / "ghost.0123.owner").touch()
    (zoo.root / ".index.json.abc.tmp").write_text("{")
    # A live writer in the middle of staging (this process holds its owner lock).
    with zoo._staging("live") as live:
        assert "ghost" not in zoo.names() and zoo.verify() == []
        assert sorted(p.name for p in zoo.leftovers()) == [".index.json.abc.tmp", "ghost.0123", "ghost.0123.owner"]
        actions = zoo.repair()
        assert len(actions) == 3 and live.is_dir() and not dead.exists()
    assert zoo.leftovers() == [] and zoo.verify() == []
    assert file_digests(zoo.root / MODULES_DIR) == before


def test_orphans_are_reported_then_reindexed_or_removed(tmp_path):
    zoo = _seed_zoo(tmp_path / "zoo")
    source = Zoo(tmp_path / "other")
    add_tiny(source, "complete", seed=5)
    add_tiny(source, "partial", seed=6)
    shutil.copytree(source.module_dir("complete"), zoo.root / MODULES_DIR / "complete")
    shutil.copytree(source.module_dir("partial"), zoo.root / MODULES_DIR / "partial")
    (zoo.root / MODULES_DIR / "partial" / "module.safetensors").unlink()
    problems = zoo.verify()
    assert len(problems) == 2 and all("not in the index" in p for p in problems)
    assert zoo.names() == ["old-a", "old-b"]  # orphans never appear as modules
    actions = zoo.repair()
    assert any("complete: re-indexed" in a for a in actions)
    assert any("partial: removed incomplete module" in a for a in actions)
    assert zoo.names() == ["complete", "old-a", "old-b"] and zoo.verify() == [] and zoo.leftovers() == []
    # A listed module that is corrupt is reported, never deleted by repair.
    weights = zoo.module_dir("old-b") / "module.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert any("old-b" in p and "sha256" in p for p in zoo.verify())
    zoo.repair()
    assert weights.exists() and "old-b" in zoo.names()


def test_cli_verify_repair(tmp_path, capsys):
    zoo = _seed_zoo(tmp_path / "zoo")
    (zoo.root / STAGING_DIR / "ghost.1").mkdir(parents=True)
    shutil.copytree(zoo.module_dir("old-a"), zoo.root / MODULES_DIR / "copy")
    assert main(["zoo", "verify", "--zoo", str(zoo.root)]) == 1
    err = capsys.readouterr().err
    assert "copy" in err and "not in the index" in err and "leftover" in err
    # 'copy' has a manifest naming 'old-a': it does not verify as 'copy', so repair removes it.
    assert main(["zoo", "verify", "--zoo", str(zoo.root), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "repaired: copy: removed incomplete module" in out and "2 module(s), all verified" in out
    assert zoo.leftovers() == [] and sorted(p.name for p in (zoo.root / MODULES_DIR).iterdir()) == ["old-a", "old-b"]


def test_add_refuses_broken_modules_before_writing_anything(tmp_path):
    zoo = _seed_zoo(tmp_path / "zoo")
    before = listing(zoo.root)
    broken = tiny_module(7)
    with torch.no_grad():
        next(broken.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ZooError, match="NaN or infinite"):
        zoo.add(tiny_manifest("broken"), broken)
    manifest = tiny_manifest("nan-metric")
    manifest.metrics = {"val_score": float("nan")}
    with pytest.raises(Exception, match="NaN") as info:
        zoo.add(manifest, tiny_module(8))
    assert "FormatError" in type(info.value).__name__
    with pytest.raises(ZooError, match="already has a module named 'old-a'"):
        add_tiny(zoo, "old-a", seed=9)
    assert listing(zoo.root) == before

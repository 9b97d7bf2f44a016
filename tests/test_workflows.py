"""The workflows behind the commands: one writer of downstream models, whoever calls it."""

from __future__ import annotations

import json
import math
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


def test_aggregate_talks_while_it_works_and_its_budget_is_a_deadline(tiny_zoo, tmp_path, capsys):
    import re
    import time

    from conftest import write_image_folder

    folder = write_image_folder(tmp_path / "photos", per_class=8)
    budget = 12.0
    started = time.perf_counter()
    code = main(["aggregate", "--zoo", str(tiny_zoo.root), "--task", f"folder:{folder}", "--shots", "4",
                 "--steps", "3000", "--budget", str(budget), "--out", str(tmp_path / "m"), "--no-progress"])
    elapsed = time.perf_counter() - started
    out = capsys.readouterr().out
    assert code == 0
    assert elapsed <= 1.1 * budget, f"the run took {elapsed:.1f} s for a budget of {budget} s"
    assert re.search(r"auto: \d+ candidates .* about .* in all", out)  # the estimate, before training
    assert "scratch: 2 setting(s) over 4 folds" in out and "cut short by the budget" in out  # true few-shot
    assert "validation images" in out
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    search = manifest["search"]  # the budget ended something: a run cut short, or candidates left out
    assert any(c["cut_short"] for c in search["candidates"]) or search["skipped"]


def test_the_reporter_writes_a_line_at_least_every_heartbeat_while_a_run_trains(monkeypatch):
    from vimw.workflows.reporting import SearchReporter

    clock = [0.0]
    monkeypatch.setattr("vimw.workflows.reporting.time.perf_counter", lambda: clock[0])
    written = []
    reporter = SearchReporter(lambda line: written.append((clock[0], line)), terminal=False, heartbeat=20.0)
    reporter.run_started("scratch", 0, 2, SearchSettings().base_config(10))
    for step in range(1, 200):  # a step every second, an epoch every 25
        clock[0] = float(step)
        if step % 25 == 0:
            reporter.epoch(step // 25, {"val_score": 0.5 + step / 1000, "in_warmup": False})
        reporter.tick()
    times = [t for t, _ in written]
    assert len(written) >= 9 and max(b - a for a, b in zip(times, times[1:])) <= 21.0
    assert "best validation accuracy so far 0.6750" in written[-1][1]


def test_one_shot_and_a_budget_cut_save_a_model_whose_unmeasured_numbers_are_null(tiny_zoo, tmp_path):
    # At 1 shot nothing can be held out, and a budget that ends the first cross-validation leaves
    # it without numbers: the model is still written, its validation numbers null (not NaN).
    npz = write_npz(tmp_path / "bands.npz", n=60)
    search = SearchSettings(steps=2, augment=False)
    for shots, budget, out in ((1, None, "one-shot"), (3, 1e-6, "cut")):
        settings = AggregateSettings(zoo=str(tiny_zoo.root), task=f"npz:{npz}", shots=shots, out=str(tmp_path / out),
                                     budget=budget, search=search)
        aggregate(settings)
        manifest = json.loads((tmp_path / out / "manifest.json").read_text())
        assert manifest["metrics"]["test_score"] > 0
        if shots == 1:
            assert manifest["metrics"]["val_loss"] is None
            assert all(c["val"] is None for c in manifest["search"]["candidates"])
        # the saved model loads and scores again
        assert main(["evaluate", "--model", str(tmp_path / out), "--zoo", str(tiny_zoo.root)]) == 0


def test_unmeasured_as_null_replaces_nan_only():
    from vimw.io import unmeasured_as_null

    value = {"a": math.nan, "b": [1.0, math.nan, {"c": math.nan}], "d": "nan", "e": 0.5}
    assert unmeasured_as_null(value) == {"a": None, "b": [1.0, None, {"c": None}], "d": "nan", "e": 0.5}

"""The TransMiter splits benchmark (``benchmarks/transfer_splits.py``) and its protocol file:
a unit is deterministic (cold or warm cache), development and evaluation never meet, the
listed random splits are the drawn ones, and the statistics say what they claim."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import transfer_splits as ts  # noqa: E402

TINY_PAIR = {"name": "tiny", "weak": "efficientnet_lite0@40+invert", "strong": "efficientnet_lite0@48"}


@pytest.fixture(scope="module")
def protocol():
    return ts.read_protocol()


def tiny_protocol(protocol: dict, cache: Path) -> dict:
    """The real protocol at a size a test can run: few images, small models, small grids."""
    p = copy.deepcopy(protocol)
    p["cache"] = str(cache)
    ev = p["evaluation"]
    ev["recipe"] = {"views": 2, "shots": 2, "val_per_class": 2, "pool_per_class": 4, "num_unlabeled": 16,
                    "num_calibration": 8, "num_test": 20}
    ev["grids"].update({"refine_lrs": [1e-3, 3e-3], "strong_lrs": [1e-3, 3e-3], "lambdas": [0.1, 1.0]})
    ev["pairs"] = [TINY_PAIR]
    ev["defaults"] = {"consistency": 1.0, "K": 24, "align_views": 4, "num_align": 8, "distill": 1.0,
                      "strong_consistency": 1.0}
    return p


def _without_seconds(value):
    """``value`` without the timings (the only thing a rerun may change)."""
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


@pytest.mark.slow
def test_two_runs_of_a_unit_give_identical_rows_one_cold_and_one_warm(protocol, tmp_path, monkeypatch):
    from vimw.transfer import data, zeroshot
    from vimw.transfer.protocol import ProtocolConfig  # noqa: F401  (the import the unit makes)

    tiny = tiny_protocol(protocol, tmp_path / "cache")
    was = torch.are_deterministic_algorithms_enabled()
    try:
        cold = ts.run_unit(tiny, TINY_PAIR, "complement", 0, cache=tiny["cache"], log=lambda m: None)
        # A fresh process: nothing embedded or encoded yet, every zero-shot logit read from the cache.
        monkeypatch.setattr(zeroshot, "_DEFAULT_TEXT_ENCODER", None)
        monkeypatch.setattr(data, "_FEATURES", {})
        warm = ts.run_unit(tiny, TINY_PAIR, "complement", 0, cache=tiny["cache"], log=lambda m: None)
    finally:
        torch.use_deterministic_algorithms(was)
    methods = {r["method"] for r in cold["rows"]}
    assert {"transferred", "transmiter_plus", "transmiter_plus_ce", "strong_fine_tuned", "proxy", "ensemble",
            "transferred+unlabeled"} <= methods
    assert cold["determinism"] == {"torch_threads": 1, "deterministic_algorithms": True}
    assert _without_seconds(cold["rows"]) == _without_seconds(warm["rows"])
    assert _without_seconds(cold["choices"]) == _without_seconds(warm["choices"])


@pytest.mark.slow
def test_a_later_protocol_reuses_an_earlier_units_baselines_only_when_shared_rows_match(protocol, tmp_path,
                                                                                        monkeypatch):
    """Protocol v3 changes refinement alone: its units rerun everything but strong fine-tuning,
    check that every row both runs share is identical, and carry the earlier strong fine-tuning."""
    monkeypatch.setattr(ts, "RESULTS", tmp_path)
    tiny = tiny_protocol(protocol, tmp_path / "cache")
    was = torch.are_deterministic_algorithms_enabled()
    unit = ts.unit_id(TINY_PAIR["name"], "complement", 0, tiny["task"])
    shared = ["weak_zero_shot", "strong_zero_shot", "teacher", "transferred", "proxy", "ensemble",
              "transmiter_plus_ce", "transferred+unlabeled"]
    later = copy.deepcopy(tiny)
    later["evaluation"]["defaults"]["zero_shot"] = 1.0
    later["evaluation"]["reuse"] = {"protocol": "earlier.yaml", "sha": tiny["file"]["sha"], "units": "earlier",
                                    "methods": ["strong_fine_tuned"], "identical": shared,
                                    "renamed": {"transmiter_plus": "transmiter_plus_v2"}}
    try:
        earlier = ts.run_unit(tiny, TINY_PAIR, "complement", 0, cache=tiny["cache"], log=lambda m: None)
        ts.write_json(tmp_path / "earlier" / f"{unit}.json", earlier)
        reused = ts.run_unit(later, TINY_PAIR, "complement", 0, cache=tiny["cache"], log=lambda m: None)
        broken = copy.deepcopy(earlier)
        next(r for r in broken["rows"] if r["method"] == "teacher")["hm"] += 0.01
        ts.write_json(tmp_path / "earlier" / f"{unit}.json", broken)
        with pytest.raises(SystemExit, match="rows differ"):
            ts.run_unit(later, TINY_PAIR, "complement", 0, cache=tiny["cache"], log=lambda m: None)
    finally:
        torch.use_deterministic_algorithms(was)
    by = lambda u: {(r["protocol"], r["method"]): r for r in u["rows"]}  # noqa: E731
    mine, theirs = by(reused), by(earlier)
    assert reused["reused"]["identical_rows_checked"] >= len(shared)
    assert mine[("base", "strong_fine_tuned")] == theirs[("base", "strong_fine_tuned")]
    assert mine[("base", "transmiter_plus_v2")]["hm"] == theirs[("base", "transmiter_plus")]["hm"]
    assert reused["config"]["refine"]["zero_shot"] == 1.0 and reused["cost_ratios"]


def test_development_and_evaluation_never_meet(protocol):
    dev, ev = protocol["development"], protocol["evaluation"]
    assert not set(dev["seeds"]) & set(ev["seeds"]) and min(dev["seeds"]) >= 100
    assert dev["data_seed"] != ev["data_seed"]
    assert dev["test_from"] == "train" and ev["test_from"] == "test"  # development reads no test image
    classes = set(protocol["classes"])
    dev_splits = {frozenset(s) for s in dev["splits"].values()}
    dev_splits |= {frozenset(classes - s) for s in dev_splits}
    assert not dev_splits & {frozenset(s) for s in ev["splits"].values()}


def test_the_listed_random_splits_are_the_drawn_ones(protocol):
    classes, dev, ev = protocol["classes"], protocol["development"]["splits"], protocol["evaluation"]["splits"]
    default, complement = ev["default"], ev["complement"]
    assert default == classes[:5] and complement == classes[5:]
    assert ts.draw_splits(classes, 3, 124, [default, complement]) == list(dev.values())
    randoms = [v for k, v in ev.items() if k.startswith("random")]
    assert ts.draw_splits(classes, 4, 24, [default, complement, *dev.values()]) == randoms
    assert len(ev) >= 6 and len(protocol["evaluation"]["seeds"]) >= 3


def test_the_protocol_sha_is_the_git_blob_hash(protocol):
    git = subprocess.run(["git", "hash-object", str(ts.PROTOCOL)], capture_output=True, text=True, cwd=ROOT)
    if git.returncode:
        pytest.skip("git is not available")
    assert protocol["file"] == {"path": "benchmarks/transfer_protocol.yaml", "sha": git.stdout.strip()}


def _rows(values: dict[str, dict[tuple[str, int], float]]) -> list[dict]:
    return [{"split": split, "seed": seed, "method": m, "hm": hm} for m, by in values.items()
            for (split, seed), hm in by.items()]


def test_paired_differences_are_per_split_means_with_a_t_interval_and_sign_counts():
    a = {("s1", 0): 0.6, ("s1", 1): 0.8, ("s2", 0): 0.5, ("s2", 1): 0.5, ("s3", 0): 0.4, ("s3", 1): 0.4}
    b = {("s1", 0): 0.5, ("s1", 1): 0.5, ("s2", 0): 0.5, ("s2", 1): 0.5, ("s3", 0): 0.5, ("s3", 1): 0.3}
    out = ts.paired(_rows({"a": a, "b": b}), "a", "b")
    assert out["per_split"] == pytest.approx({"s1": 0.2, "s2": 0.0, "s3": 0.0})
    assert out["splits"] == {"ahead": 1, "tied": 2, "behind": 0}
    assert out["units"] == {"ahead": 3, "tied": 2, "behind": 1}
    diffs = [0.2, 0.0, 0.0]
    mean, sd = sum(diffs) / 3, (sum((d - 0.2 / 3) ** 2 for d in diffs) / 2) ** 0.5
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert out["over_splits"] == pytest.approx({"n": 3, "mean": mean, "low": mean - half, "high": mean + half})


def test_goals_fail_when_one_split_of_six_is_not_enough():
    splits = [f"s{i}" for i in range(6)]
    ahead = {"ahead": 6, "tied": 0, "behind": 0}

    def comparison(a, b, split_signs, mean=0.01):
        return {"a": a, "b": b, "splits": split_signs, "over_splits": {"mean": mean}}

    summary = [{"dataset": "d", "pair": "p", "protocol": "base", "splits": splits,
                "cost_ratios": {"with_teacher": 0.2},
                "comparisons": [comparison("transferred", "strong_zero_shot", ahead),
                                comparison("transferred", "proxy", ahead, -0.01),
                                comparison("transferred", "ensemble", ahead),
                                comparison("transmiter_plus", "strong_fine_tuned",
                                           {"ahead": 4, "tied": 0, "behind": 2})]}]
    checks = ts.goals(summary)[0]["checks"]
    assert checks["transferred > strong_zero_shot on every split"]
    assert not checks["transferred >= proxy on the mean"]
    assert checks["transmiter_plus >= strong_fine_tuned on the mean"]
    assert not checks["transmiter_plus >= strong_fine_tuned on >= 5 of 6 splits"]
    assert checks["transmiter_plus time <= 25% of strong fine-tuning's, teacher counted"]


def test_the_defaults_development_chose_are_the_library_defaults(protocol):
    """What `vimw transfer` does by default is what the headline (image use i) measured."""
    from vimw.transfer.settings import TransferSettings

    s, ev = TransferSettings(), protocol["evaluation"]
    chosen, grids = ev["defaults"], ev["grids"]
    assert (chosen["consistency"], chosen["K"], chosen["align_views"], chosen["distill"]) == (
        s.teacher.consistency, s.data.K, s.data.align_views, s.refine.distill)
    assert (list(s.refine.lrs), list(s.lambdas), list(s.alphas)) == (grids["refine_lrs"], grids["lambdas"],
                                                                    grids["alphas"])
    assert (s.data.extraction, s.data.num_align) == (ev["image_uses"][0]["extraction"], 0)
    assert {k: getattr(s.data, k) for k in ev["recipe"]} == ev["recipe"]

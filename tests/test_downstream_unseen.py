"""The unseen-task benchmark (``benchmarks/downstream_unseen.py``): each protocol file reads into the plan
it says (the library agreeing with it), and ``best_zoo`` chooses as its protocol's rule says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import downstream_unseen as du  # noqa: E402
from transfer_splits import read_protocol  # noqa: E402
from vimw.workflows.compare import MethodCV  # noqa: E402

PROTOCOLS = ("protocol-unseen.yaml", "protocol-unseen-auto.yaml", "protocol-unseen-residual.yaml")


@pytest.mark.parametrize("name", PROTOCOLS)
def test_every_protocol_reads_into_a_plan_the_library_agrees_with(name):
    plan = du.plan_from_protocol(read_protocol(str(ROOT / "benchmarks" / name)))
    assert plan["seeds"] and set(plan["methods"]) >= {"scratch", "linear_probe"}
    assert all(m in plan["methods"] for m in plan["best_zoo_pool"])


def test_the_protocols_evaluation_seeds_never_meet():
    seeds = [set(read_protocol(str(ROOT / "benchmarks" / n))["evaluation"]["seeds"]) for n in PROTOCOLS]
    assert all(not (a & b) for i, a in enumerate(seeds) for b in seeds[i + 1:])


def _cv(method: str, correct: list[int] | None, loss: float = 0.5) -> MethodCV:
    if correct is None:  # 1 shot: nothing held out
        return MethodCV(method, {}, "fixed")
    score = sum(correct) / len(correct)
    return MethodCV(method, {}, "k-fold", metrics={"score": score, "loss": loss, "images": len(correct)},
                    correct=torch.tensor(correct, dtype=torch.float64))


def test_best_zoo_takes_the_protocols_one_shot_order_and_otherwise_the_selection_rule():
    candidates = ("ridge_probe", "scratch", "zoo_ridge")
    pool, order = ["zoo_ridge", "zoo_residual"], ["zoo_residual", "zoo_ridge"]
    one_shot = {m: _cv(m, None) for m in (*candidates, "zoo_residual")}
    assert du.choices(one_shot, candidates, du.AUTO_RULES[1], pool, order)["best_zoo"] == "zoo_residual"
    assert du.choices(one_shot, candidates, du.AUTO_RULES[1])["best_zoo"] == "zoo_ridge"  # the earlier protocols'
    scored = {"scratch": _cv("scratch", [1, 0] * 6), "ridge_probe": _cv("ridge_probe", [0] * 12),
              "zoo_ridge": _cv("zoo_ridge", [1] * 9 + [0] * 3), "zoo_residual": _cv("zoo_residual", [1] * 6 + [0] * 6)}
    picked = du.choices(scored, candidates, du.AUTO_RULES[1], pool, order)
    assert picked["best_zoo"] == "zoo_ridge"  # the higher held-out accuracy, whatever the 1-shot order
    assert picked["auto"] in candidates  # auto's candidates are the library's, not best_zoo's pool


def test_a_best_zoo_rule_naming_a_method_without_the_zoo_is_refused():
    ev = {"auto": {"candidates": ["scratch", "zoo_ridge"]}, "best_zoo": {"candidates": ["scratch", "zoo_ridge"]}}
    with pytest.raises(SystemExit, match="zoo methods"):
        du.best_zoo_rule(ev)


def test_the_selection_bound_takes_the_better_on_test_per_seed_only_where_every_member_ran():
    sys.path.insert(0, str(ROOT / "benchmarks" / "dev"))
    import selection_bound as sb

    tab = {("t", 2): {"zoo_ridge": {20: 0.5, 21: 0.7}, "zoo_residual": {20: 0.6, 21: 0.4, 22: 0.9},
                      "scratch": {20: 0.55, 21: 0.5, 22: 0.5}, "scratch@seed2": {20: 0.5, 21: 0.65}}}
    cell = sb.with_oracles(tab, ["zoo_ridge", "zoo_residual"])[("t", 2)]
    assert cell[sb.ORACLE_ZOO] == {20: 0.6, 21: 0.7}  # seed 22 lacks zoo_ridge: no oracle there
    assert cell[sb.ORACLE_SEED] == {20: 0.55, 21: 0.65}
    gap = du.over_tasks(tab, 2, sb.ORACLE_ZOO, sb.ORACLE_SEED, ["t"])
    assert gap["n"] == 2 and gap["mean"] == pytest.approx(100 * (0.05 + 0.05) / 2)

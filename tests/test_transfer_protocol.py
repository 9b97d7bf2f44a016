"""The TransMiter base-to-novel protocol behind the README's transfer numbers
(``run_protocol`` -> ``prepare`` + ``run_seed`` per seed), end to end at a tiny size."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vimw.errors import DataError
from vimw.evaluation.selection import best_candidate
from vimw.transfer.data import DataConfig
from vimw.transfer.protocol import LABELS, ProtocolConfig, format_table, run_protocol

torch.set_num_threads(1)

FMNIST = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
BASE = ("Trouser", "Bag")


def tiny_config() -> ProtocolConfig:
    default = ProtocolConfig()
    data = DataConfig(task="fmnist", base=BASE, shots=2, val_per_class=2, pool_per_class=4, num_unlabeled=24,
                      num_align=4, num_calibration=8, num_test=20, K=24, views=1)
    return replace(default, data=data, weak="efficientnet_lite0@40+invert", strong="efficientnet_lite0@48",
                   teacher=replace(default.teacher, epochs=1, progress=False),
                   extraction=replace(default.extraction, epochs=1, progress=False),
                   refine=replace(default.refine, epochs=1, progress=False),
                   lambdas=(1.0, 10.0), alphas=(0.0, 0.5, 1.0), teacher_ablation=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = tiny_config()
    lines: list[str] = []
    result = run_protocol(cfg, tmp_path_factory.mktemp("logits"), seeds=(0, 1), log=lines.append)
    return cfg, result, lines


@pytest.mark.slow
def test_every_protocol_scores_every_method_with_base_novel_and_their_harmonic_mean(run):
    cfg, result, lines = run
    assert result["split"] == {"base": list(BASE), "novel": [c for c in FMNIST if c not in BASE]}
    assert [r["seed"] for r in result["per_seed"]] == [0, 1]
    for seed_run in result["per_seed"]:
        assert set(seed_run["rows"]) == {*cfg.protocols, "fixed"}
        for protocol in cfg.protocols:
            assert {"weak_zero_shot", "teacher", "transferred", "transmiter_plus", "strong_fine_tuned"} <= set(
                seed_run["rows"][protocol])
        for rows in seed_run["rows"].values():
            for row in rows.values():
                b, n = row["base"], row["novel"]
                assert 0.0 <= b <= 1.0 and 0.0 <= n <= 1.0
                assert row["hm"] == pytest.approx(0.0 if b + n == 0 else 2 * b * n / (b + n))
    assert lines  # the run says what it does


@pytest.mark.slow
def test_zero_shot_rows_do_not_depend_on_the_seed(run):
    _, result, _ = run
    first, second = result["per_seed"]
    for method in ("weak_zero_shot", "strong_zero_shot"):
        assert first["rows"]["all"][method] == second["rows"]["all"][method]


@pytest.mark.slow
def test_settings_are_chosen_by_the_selection_rule_and_base_validation_never_scores_novel_classes(run):
    cfg, result, _ = run
    for seed_run in result["per_seed"]:
        for protocol in cfg.protocols:
            choices = seed_run["choices"][protocol]
            for key, grid_key, grid in (("lambda", "lambda", cfg.lambdas), ("transferred_alpha", "alpha", cfg.alphas),
                                        ("transmiter_plus_alpha", "alpha", cfg.alphas)):
                chosen, candidates = choices[key]["chosen"], choices[key]["candidates"]
                assert [c[grid_key] for c in candidates] == list(grid) and chosen in grid
                picked = best_candidate([{"score": c["score"], "loss": c["loss"]} for c in candidates])
                assert candidates[picked][grid_key] == chosen
                novel_seen = [c["novel"] is not None for c in candidates]
                assert all(novel_seen) if protocol == "all" else not any(novel_seen)


@pytest.mark.slow
def test_summary_is_the_mean_over_seeds_and_the_table_names_every_method(run):
    cfg, result, _ = run
    for protocol, table in result["summaries"].items():
        for method, row in table.items():
            runs = [r["rows"][protocol][method]["hm"] for r in result["per_seed"]]
            assert row["seeds"] == 2 and row["hm_per_seed"] == runs
            assert row["hm"] == pytest.approx(sum(runs) / 2)
    # The headline summary is the base-class-validation protocol's (the stricter one).
    assert result["summary"] == result["summaries"]["base"]
    text = format_table(result["summaries"]["base"])
    assert all(LABELS[m] in text for m in result["summaries"]["base"])


def test_a_run_without_seeds_is_refused(tmp_path):
    with pytest.raises(DataError, match="no seeds"):
        run_protocol(tiny_config(), tmp_path, seeds=())


def test_alignment_rank_is_limited_by_the_rows_and_by_k_minus_one():
    """Standardised rows sum to zero over K, so no more than K - 1 directions can be fitted;
    with fewer rows than that, the rest of the rotation is set by lambda's pull alone."""
    from vimw.transfer.protocol import alignment_rank

    g = torch.Generator().manual_seed(0)
    few, many = torch.randn(10, 32, generator=g), torch.randn(100, 32, generator=g)
    assert alignment_rank(few, few + 0.1 * torch.randn(10, 32, generator=g)) == {
        "rows": 10, "K": 32, "rank_source": 10, "rank_target": 10, "rank_cross": 10}
    assert alignment_rank(many, many + 0.1 * torch.randn(100, 32, generator=g))["rank_cross"] == 31


def test_the_demo_hears_every_stage_from_the_protocols_own_log(run):
    # The demo reads the protocol's log lines: this pins their format to what it parses.
    from vimw.transfer.demo import STAGES, stage_announcer

    _, _, lines = run
    said: list[str] = []
    log = stage_announcer(said.append)
    for line in lines:
        log(line)
    assert said[0].startswith("  the weak model's zero-shot logits over the image sets (")
    assert said[1].startswith("  the strong model's zero-shot logits over the image sets (")
    assert [s.rsplit(" (", 1)[0] for s in said[2:]] == [f"  {STAGES[k]}" for k in STAGES]

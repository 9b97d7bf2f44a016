"""True few-shot choices (issue 23): folds inside the shots, successive halving, closed-form heads, ``auto``'s
estimate of what the zoo gives, on synthetic tasks and the tiny zoo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import synthetic_task
from vimw.aggregation.closedform import fit_ridge_head
from vimw.methods import get_method
from vimw.workflows.compare import (
    ONE_SHOT_ORDER,
    MethodCV,
    SearchSettings,
    ZooGain,
    choose_auto,
    choose_method,
    cross_validate,
    few_shot_context,
    few_shot_folds,
    halving_fits,
    run_auto,
    successive_halving,
)

torch.set_num_threads(1)
FAST = SearchSettings(steps=2, batch_size=16, augment=False)


def test_folds_hold_out_one_image_per_class_each_and_every_image_once():
    targets = torch.tensor([0, 1, 2] * 4)  # 4 shots of 3 classes
    folds = few_shot_folds(targets, seed=5)
    assert len(folds) == 4
    held = np.concatenate([h for _, h in folds])
    assert sorted(held.tolist()) == list(range(12))  # each labelled image held out exactly once
    for kept, h in folds:
        assert sorted(targets[h].tolist()) == [0, 1, 2]  # one image of every class
        assert set(kept.tolist()).isdisjoint(h.tolist())


def test_more_shots_than_folds_hold_several_per_class_and_one_shot_has_no_folds():
    ten = few_shot_folds(torch.arange(4).repeat(10), seed=0, max_folds=5)
    assert len(ten) == 5 and all(len(h) == 8 for _, h in ten)  # 2 images of each of 4 classes
    assert few_shot_folds(torch.tensor([0, 1, 2]), seed=0) == []  # one image per class: nothing to hold out
    assert few_shot_folds(torch.tensor([0, 0, 1]), seed=0) == []


def test_successive_halving_keeps_the_candidate_a_full_run_picks_at_less_cost():
    rng = np.random.default_rng(0)
    for trial in range(50):
        count, folds = int(rng.integers(2, 9)), int(rng.integers(2, 11))
        best = int(rng.integers(count))
        # Candidate i scores 0.5 per fold (0.8 for the clearly best one) plus fold noise of +-0.05.
        scores = 0.5 + 0.3 * (np.arange(count) == best)[:, None] + rng.uniform(-0.05, 0.05, (count, folds))
        evaluated = set()

        def metrics(i: int, units: int) -> dict:
            evaluated.update((i, f) for f in range(units))
            return {"score": float(scores[i, :units].mean()), "loss": 0.0}

        halving = successive_halving(count, metrics, folds)
        full = max(range(count), key=lambda i: scores[i].mean())
        assert halving.chosen == full == best
        assert len(evaluated) <= halving_fits(count, folds) < count * folds or folds == 1


def test_successive_halving_ranks_by_the_selection_rule_and_keeps_full_ties_in_order():
    halving = successive_halving(3, lambda i, r: {"score": 0.5, "loss": [0.3, 0.1, 0.1][i]}, 4)
    assert halving.chosen == 1  # equal accuracy: the lower loss, then the earlier candidate
    assert [r["resource"] for r in halving.rungs] == [1, 2, 4]  # 3 -> 2 -> 1, then the whole resource


def test_a_closed_form_method_cross_validates_as_refitting_on_each_fold(lite0, tiny_zoo):
    data = synthetic_task(n_train=12, n_val=0 + 3, n_test=6, seed=2)
    context, folds = few_shot_context(lite0, data, tiny_zoo, None, seed=1)
    assert len(folds) == 4 and len(context.data.val) == 0  # the validation split is not used
    method = get_method("zoo_ridge")
    config_for = lambda n: FAST.base_config(n)  # noqa: E731
    held = method.held_out_logits(context, config_for, folds)
    model, _ = method.build_seeded(context, config_for(12))
    features = method.features(model, context, context.data.train.images)
    for (kept, out), logits in zip(folds, held):
        head = fit_ridge_head(features[kept], context.data.train.targets[kept], data.num_classes)
        expected = head.temperature * (features[out].double() @ head.weight.T + head.bias)
        torch.testing.assert_close(logits, expected.float(), rtol=1e-4, atol=1e-4)


def test_a_trained_method_sees_only_its_folds_training_images(lite0, tiny_zoo):
    data = synthetic_task(n_train=9, n_val=3, n_test=6, seed=3)
    context, folds = few_shot_context(lite0, data, tiny_zoo, None, seed=0)
    seen = []
    method = get_method("scratch")
    original = type(method).train

    def spy(self, ctx, config, **kw):
        seen.append(ctx.data.train.images)
        assert len(ctx.data.val) == 0  # no validation images: the run keeps its last step
        return original(self, ctx, config, **kw)

    type(method).train = spy
    try:
        cv = cross_validate(context, "scratch", FAST, folds)
    finally:
        type(method).train = original
    labelled = context.data.train.images
    for images in seen:  # every run trained on one fold's own rows (never on its held-out images)
        assert any(torch.equal(images, labelled[torch.as_tensor(kept)]) for kept, _ in folds)
    assert cv.runs == len(seen) == halving_fits(len(FAST.grid("scratch")), len(folds))
    assert cv.metrics["images"] == len(labelled) and cv.correct.shape == (len(labelled),)


def test_the_zoo_gain_says_helps_or_no_evidence_with_its_interval():
    helps = ZooGain("zoo_ridge", "scratch", 3.1, 0.8, 5.4, 40, 5)
    assert helps.sentence("zoo_ridge").startswith("the zoo helps: +3.1 points (95% interval +0.8 to +5.4")
    unsure = ZooGain("zoo_ridge", "scratch", 1.0, -2.0, 4.0, 40, 5)
    said = unsure.sentence("scratch")
    assert said.startswith("no evidence that the zoo helps this task") and said.endswith("using scratch")
    assert ZooGain("zoo_ridge", "scratch", -6.0, -9.0, -3.0, 40, 5).verdict() == "hurts"


def _cv(method: str, correct: list[int], loss: float) -> MethodCV:
    held = torch.tensor(correct, dtype=torch.float32)
    return MethodCV(method, {}, "4-fold cross-validation", {"score": float(held.mean()), "loss": loss,
                                                              "images": len(correct)}, held)


def test_auto_leaves_the_fresh_module_only_on_evidence():
    fresh = _cv("scratch", [1, 1, 0, 0, 1, 0, 1, 0] * 3, loss=1.2)
    one_better = _cv("zoo_ridge", [1, 1, 1, 0, 1, 0, 1, 0] * 3, loss=0.6)  # +4 of 24 images: interval across 0
    tie = _cv("ridge_probe", [1, 1, 0, 0, 1, 0, 1, 0] * 3, loss=0.5)  # the same images, a lower loss
    clearly = _cv("zoo_ridge", [1] * 24, loss=0.3)  # every held-out image
    order = ["ridge_probe", "scratch", "zoo_ridge"]
    # The selection rule alone would leave scratch on a tie or a few images...
    assert choose_method({"scratch": fresh, "ridge_probe": tie}, order) == "ridge_probe"
    assert choose_method({"scratch": fresh, "zoo_ridge": one_better}, order) == "zoo_ridge"
    # ...auto keeps it unless the paired 95% interval is above zero.
    assert choose_auto({"scratch": fresh, "ridge_probe": tie}, order) == "scratch"
    assert choose_auto({"scratch": fresh, "zoo_ridge": one_better}, order) == "scratch"
    assert choose_auto({"scratch": fresh, "zoo_ridge": clearly}, order) == "zoo_ridge"
    assert choose_auto({"zoo_ridge": one_better}, ["zoo_ridge"]) == "zoo_ridge"  # no fresh module among them


def test_one_shot_choices_are_fixed_in_advance():
    fixed = {m: MethodCV(m, {}, "fixed (a class has one image)") for m in ("scratch", "ridge_probe", "zoo_ridge")}
    assert choose_method(fixed, ["ridge_probe", "scratch", "zoo_ridge"]) == ONE_SHOT_ORDER[0] == "scratch"
    assert choose_method(fixed, ["ridge_probe", "zoo_ridge"]) == "zoo_ridge"  # best_zoo at 1 shot


@pytest.fixture(scope="module")
def auto_few_shot(lite0, tiny_zoo):
    data = synthetic_task(n_train=9, n_val=9, n_test=6, seed=6)
    return data, run_auto(lite0, data, zoo=tiny_zoo, shots=3, settings=FAST)


def test_auto_prints_its_gain_estimate_and_its_choice(auto_few_shot):
    data, auto = auto_few_shot
    said = auto.explain()
    assert f"{auto.chosen.method} " in said and "<- chosen" in said
    assert auto.gain is not None and auto.gain.images == len(data.train)  # every labelled image, held out once
    assert auto.gain_sentence() in said
    assert ("the zoo helps:" in said) or ("no evidence that the zoo helps this task" in said) or (
        "the zoo hurts this task" in said)
    assert said.rstrip().endswith(f"using {auto.chosen.method}")
    kept = auto.kept_fresh_over()  # scratch kept over a better-scored candidate: said, with its interval
    assert (kept is None) == ("keeping scratch" not in said) and auto.selection in auto.reason()
    record = auto.to_dict()
    assert record["zoo_gain"]["fresh_method"] == "scratch" and record["best_zoo"] == "zoo_ridge"


def test_auto_uses_the_shots_alone_and_chooses_by_the_rule_on_held_out_images(auto_few_shot):
    data, auto = auto_few_shot
    assert auto.val_images == len(data.train) and auto.selection == "3-fold cross-validation"
    assert choose_auto(auto.cvs, list(auto.cvs)) == auto.chosen.method
    assert auto.result.val_score == pytest.approx(auto.cvs[auto.chosen.method].metrics["score"])


def test_two_classes_of_one_image_each_fit_a_closed_form_head_and_auto_runs(lite0, tiny_zoo):
    # The smallest true few-shot task: 1 shot of 2 classes (2 images), and 2 shots (folds of 2 images).
    features = torch.randn(2, 16)
    head = fit_ridge_head(features, torch.tensor([0, 1]), 2)
    assert head.chosen_by.startswith("fixed") and (features.double() @ head.weight.T + head.bias).argmax(1).tolist() == [0, 1]
    for shots in (1, 2):
        data = synthetic_task(n_train=2 * shots, n_val=2, n_test=4, classes=2, seed=shots)
        auto = run_auto(lite0, data, zoo=tiny_zoo, shots=shots, settings=FAST)
        assert auto.chosen.method in auto.cvs and auto.gain_sentence() in auto.explain()


def test_a_budget_cut_leaves_out_the_trained_candidates_never_the_closed_form_ones(lite0, tiny_zoo):
    # scratch is listed before zoo_ridge; with no time at all, the closed-form zoo_ridge still runs
    # (it costs seconds) and the trained scratch is the one left out.
    data = synthetic_task(n_train=9, n_val=9, n_test=6, seed=7)
    auto = run_auto(lite0, data, zoo=tiny_zoo, shots=3, settings=FAST, candidates=("scratch", "zoo_ridge"),
                    budget_seconds=0.0)
    assert list(auto.cvs) == ["zoo_ridge"] and auto.skipped == ["scratch"]
    assert auto.chosen.method == "zoo_ridge"


def test_cross_validation_heartbeat_says_steps_and_time_left_against_the_plan(lite0, tiny_zoo):
    from vimw.workflows.reporting import SearchReporter

    lines: list[str] = []
    reporter = SearchReporter(lines.append, terminal=False, heartbeat=0.0)
    data = synthetic_task(n_train=9, n_val=9, n_test=6, seed=8)
    run_auto(lite0, data, zoo=tiny_zoo, shots=3, settings=FAST, candidates=("scratch",), reporter=reporter)
    beats = [line for line in lines if "scratch (cross-validation):" in line]
    assert beats and all("training steps so far" in line and "epoch" not in line for line in beats)
    counts = [int(line.split("): ")[1].split()[0]) for line in beats]
    assert counts == sorted(counts) and counts[-1] >= 2  # steps only ever grow within one cross-validation

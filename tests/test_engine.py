"""The one fitting engine and the one selection rule, on tiny pure-torch problems."""

from __future__ import annotations

import math

import pytest
import torch

from vimw.errors import TrainingError, VimwError
from vimw.evaluation.selection import best_candidate, is_better, selection_key
from vimw.training.config import FitConfig
from vimw.training.engine import RunOutputs, Trainable, cosine_lr, run_fit, warmup_steps


# -- the selection rule --------------------------------------------------------------------
def test_selection_prefers_the_lower_validation_loss_on_an_accuracy_tie():
    candidates = [{"score": 0.975, "loss": 0.40}, {"score": 0.975, "loss": 0.12}, {"score": 0.95, "loss": 0.01}]
    assert best_candidate(candidates) == 1


def test_selection_prefers_the_higher_score_whatever_the_loss():
    assert best_candidate([{"score": 0.5, "loss": 0.1}, {"score": 0.6, "loss": 2.0}]) == 1


def test_selection_by_loss_ignores_a_higher_score():
    assert best_candidate([{"score": 0.5, "loss": 0.1}, {"score": 0.6, "loss": 2.0}], criterion="loss") == 0


def test_a_full_tie_keeps_the_earlier_candidate():
    assert best_candidate([{"score": 0.7, "loss": 0.3}, {"score": 0.7, "loss": 0.3}]) == 0


def test_ineligible_candidates_are_never_selected():
    candidates = [{"score": 1.0, "loss": 0.0}, {"score": 0.2, "loss": 3.0}]
    assert best_candidate(candidates, eligible=[False, True]) == 1
    with pytest.raises(VimwError):
        best_candidate(candidates, eligible=[False, False])


def test_nan_ranks_last_and_unknown_criteria_are_refused():
    assert not is_better({"score": math.nan, "loss": 0.0}, {"score": 0.1, "loss": 9.0})
    with pytest.raises(VimwError):
        selection_key({"score": 1.0}, criterion="accuracy")


# -- the schedule ---------------------------------------------------------------------------
def test_schedule_warms_up_linearly_then_decays_to_zero():
    total, fraction = 100, 0.1
    assert warmup_steps(total, fraction) == 10
    rates = [cosine_lr(s, total, 1.0, fraction) for s in range(total + 1)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)


# -- the engine -----------------------------------------------------------------------------
class Quadratic:
    """Fit w to a target; validation scores a scripted sequence so selection is observable."""

    def __init__(self, val_scores=None):
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.target = torch.tensor([1.0, -2.0, 0.5])
        self.val_scores = list(val_scores or [])
        self.calls = 0

    def groups(self, lr=0.1):
        return [{"params": [self.w], "lr": lr}]

    def batches(self, epoch):
        return [torch.ones(4)] * 2  # two steps per epoch

    def loss(self, batch):
        return ((self.w - self.target) ** 2).sum() * batch.mean()

    def validate(self):
        score = self.val_scores[self.calls] if self.calls < len(self.val_scores) else 0.0
        self.calls += 1
        return {"score": score, "loss": float(((self.w.detach() - self.target) ** 2).sum())}

    def snapshot(self):
        return {"w": self.w.detach().clone()}

    def restore(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])


def fit(problem, *, warmup_fraction=0.05, checkpoint_dir=None, settings=None, resume=False, **kwargs):
    options = dict(steps_per_epoch=2, validate=problem.validate)
    options.update(kwargs)
    return run_fit(Trainable(problem.groups(), problem.snapshot, problem.restore), problem.batches, problem.loss,
                   config=FitConfig(epochs=5, warmup_fraction=warmup_fraction, grad_clip=None),
                   outputs=RunOutputs(checkpoint_dir=checkpoint_dir, settings=settings, resume=resume, progress=False),
                   **options)


def test_engine_trains_and_keeps_the_best_epoch_by_the_selection_rule():
    problem = Quadratic(val_scores=[0.5, 0.9, 0.9, 0.7, 0.6])
    result = fit(problem, warmup_fraction=0.0)
    # Epochs 2 and 3 tie on score; epoch 3 has the lower validation loss (training goes on).
    assert result.best_epoch == 3
    assert result.best_metrics["score"] == 0.9
    assert torch.equal(problem.w.detach(), result.best_state["w"])
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5]
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


def test_engine_never_keeps_an_epoch_that_ends_inside_warm_up():
    # 5 epochs x 2 steps, 40% warm-up = 4 steps: epochs 1 and 2 end inside it.
    problem = Quadratic(val_scores=[1.0, 1.0, 0.2, 0.1, 0.1])
    result = fit(problem, warmup_fraction=0.4)
    assert [r["in_warmup"] for r in result.history] == [True, False, False, False, False]
    assert result.best_epoch == 2


def test_engine_with_include_start_can_keep_the_starting_state():
    problem = Quadratic(val_scores=[0.9, 0.1, 0.1, 0.1, 0.1, 0.1])
    result = fit(problem, include_start=True, warmup_fraction=0.0)
    assert result.best_epoch == 0
    assert torch.equal(problem.w.detach(), torch.zeros(3))


def test_engine_without_validation_keeps_the_last_epoch():
    problem = Quadratic()
    result = fit(problem, validate=None, warmup_fraction=0.0)
    assert result.best_epoch == 5
    assert torch.equal(problem.w.detach(), result.best_state["w"])


def test_each_group_keeps_its_own_learning_rate_under_the_schedule():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    seen = []

    def loss(batch):
        return (a - 1).pow(2).sum() + (b - 1).pow(2).sum()

    def on_epoch_end(epoch, record):
        seen.append(record["lr"])

    groups = [{"params": [a], "lr": 0.01}, {"params": [b], "lr": 1.0}]
    run_fit(Trainable(groups, lambda: {}, lambda s: None), lambda e: [torch.ones(1)], loss,
            config=FitConfig(epochs=2, warmup_fraction=0.0, weight_decay=0.0), steps_per_epoch=1,
            on_epoch_end=on_epoch_end)
    assert float(b) > 10 * float(a) > 0  # Adam moves each by about its own rate


def test_a_non_finite_loss_stops_before_any_update():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(TrainingError, match="loss became"):
        run_fit(Trainable([{"params": [w], "lr": 0.1}], lambda: {}, lambda s: None), lambda e: [torch.ones(1)],
                lambda b: (w * float("nan")).sum(), config=FitConfig(epochs=1), steps_per_epoch=1)
    assert torch.equal(w.detach(), torch.ones(2))


def test_engine_resumes_from_its_checkpoint_with_the_same_result(tmp_path):
    straight = Quadratic(val_scores=[0.1, 0.2, 0.3, 0.4, 0.5])
    expected = fit(straight, warmup_fraction=0.0)

    first = Quadratic(val_scores=[0.1, 0.2, 0.3])

    def stop_at_three(epoch, record):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(first, warmup_fraction=0.0, checkpoint_dir=tmp_path, settings={"lr": 0.1}, on_epoch_end=stop_at_three)
    resumed = Quadratic(val_scores=[0.4, 0.5])
    result = fit(resumed, warmup_fraction=0.0, checkpoint_dir=tmp_path, settings={"lr": 0.1}, resume=True)
    assert result.best_epoch == expected.best_epoch == 5
    assert torch.allclose(resumed.w.detach(), straight.w.detach(), atol=1e-6)
    with pytest.raises(TrainingError, match="other training settings"):
        fit(Quadratic(), warmup_fraction=0.0, checkpoint_dir=tmp_path, settings={"lr": 0.2}, resume=True)


def test_a_stop_request_ends_the_run_with_the_best_of_what_ran():
    problem = Quadratic(val_scores=[0.5, 0.9, 0.2, 0.1, 0.1])
    steps = []

    def stop():
        steps.append(1)
        return len(steps) >= 5  # during epoch 3 (two steps per epoch)

    result = fit(problem, warmup_fraction=0.0, stop=stop)
    assert result.stopped and [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[-1]["step"] == 5  # the cut epoch ends where it stopped, and is validated
    assert result.best_epoch == 2 and torch.equal(problem.w.detach(), result.best_state["w"])
    assert not fit(Quadratic(), warmup_fraction=0.0).stopped

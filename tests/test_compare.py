"""The comparison harness behind the README's downstream numbers, at a tiny size."""

from __future__ import annotations

import pytest

from vimw.evaluation import evaluate
from vimw.workflows.compare import SearchSettings, compare_methods, format_table, summarise


@pytest.fixture(scope="module")
def compared(tiny_zoo, lite0):
    from conftest import synthetic_task

    data = synthetic_task(n_train=24, n_val=24, n_test=24, seed=3)
    kept = {}
    grid = {
        # A learning rate too small to move the head: validation must reject it.
        "linear_probe": ({"lr": 1e-9}, {"lr": 3e-2}),
        "ens": ({"lr": 3e-2, "gate_lr": 0.05},),
    }
    rows = compare_methods(lite0, data, ["linear_probe", "ens"], zoo=tiny_zoo, shots=8,
                           settings=SearchSettings(steps=4, augment=False), grids=grid,
                           on_result=lambda row, result: kept.setdefault(row.method, result))
    return data, rows, kept


def test_one_row_per_method_in_order_with_its_settings(compared):
    data, rows, _ = compared
    assert [r.method for r in rows] == ["linear_probe", "ens"]
    assert all(r.task == data.spec.name and r.shots == 8 and r.seed == 0 for r in rows)
    assert rows[1].gate_lr == 0.05
    # ens trains the head and one gate per site and zoo module on top of what the probe trains
    assert rows[1].trainable > rows[0].trainable > 0


def test_the_setting_is_chosen_on_validation(compared):
    _, rows, _ = compared
    assert rows[0].lr == 3e-2  # the useless learning rate loses on validation


def test_row_scores_are_the_kept_models_scores(compared):
    data, rows, kept = compared
    for row in rows:
        model = kept[row.method].model
        assert row.val == pytest.approx(evaluate(model, data.val)["score"])
        assert row.test == pytest.approx(evaluate(model, data.test)["score"])
        assert 0.0 <= row.test <= 1.0


def test_summary_table_names_every_method(compared):
    _, rows, _ = compared
    table = format_table(summarise(rows))
    assert "linear_probe" in table and "ens" in table


def test_an_unknown_method_is_refused_before_training(lite0):
    from conftest import synthetic_task

    from vimw.errors import VimwError

    with pytest.raises(VimwError, match="unknown method"):
        compare_methods(lite0, synthetic_task(), ["best"], zoo=None, shots=None)


def test_kfold_splits_partition_the_labelled_images_by_class_and_leave_test_alone():
    import torch
    from conftest import synthetic_task

    from vimw.workflows.compare import kfold_tasks

    data = synthetic_task(n_train=12, n_val=12, n_test=8, seed=1)
    splits = kfold_tasks(data, 3, seed=0)
    labelled = torch.cat([data.train.targets, data.val.targets])
    held = torch.cat([s.val.targets for s in splits])
    assert sorted(held.tolist()) == sorted(labelled.tolist())  # each labelled image held out exactly once
    for split in splits:
        assert len(split.train) + len(split.val) == len(labelled)
        assert set(split.val.targets.tolist()) == set(labelled.tolist())  # stratified: every class in every fold
        assert split.test is data.test


def test_kfold_metrics_are_the_mean_of_the_folds_validation_numbers(lite0):
    import statistics

    from conftest import synthetic_task

    from vimw.workflows.compare import kfold_metrics, kfold_tasks

    data = synthetic_task(n_train=12, n_val=12, n_test=8, seed=2)
    seen = []
    metrics = kfold_metrics(lite0, data, ["linear_probe"], folds=2, zoo=None, shots=None,
                            settings=SearchSettings(steps=2, augment=False),
                            on_result=lambda row, _: seen.append(row.val_metrics))
    assert len(seen) == len(kfold_tasks(data, 2, seed=0)) == 2
    assert metrics["linear_probe"]["score"] == pytest.approx(statistics.fmean(m["score"] for m in seen))
    assert metrics["linear_probe"]["loss"] == pytest.approx(statistics.fmean(m["loss"] for m in seen))

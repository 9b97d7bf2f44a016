"""Ranking zoo modules for a task without training: LogME on features with each module plugged in."""

from __future__ import annotations

import numpy as np
import pytest

from vimw.cli.main import main
from vimw.errors import VimwError
from vimw.workflows.rank import BACKBONE_ROW, logme, rank_modules, top_modules


def test_logme_prefers_features_that_predict_the_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    noise = rng.normal(size=(200, 64))
    signal = noise.copy()
    signal[:, :4] += 3 * np.eye(4)[labels]
    weak = noise.copy()
    weak[:, :4] += 0.5 * np.eye(4)[labels]
    assert logme(signal, labels) > logme(weak, labels) > logme(noise, labels)
    # Class names do not matter, only the partition: relabelling leaves the score unchanged.
    assert logme(signal, (labels + 1) % 4) == pytest.approx(logme(signal, labels))
    # More dimensions than images (a few shots, 1,280 features) is fine.
    wide = rng.normal(size=(30, 1280))
    assert np.isfinite(logme(wide, labels[:30]))


def test_logme_refuses_bad_input():
    with pytest.raises(VimwError, match="NaN"):
        logme(np.full((4, 3), np.nan), np.array([0, 1, 0, 1]))
    with pytest.raises(VimwError, match="n x d"):
        logme(np.zeros((4, 3)), np.array([0, 1]))


def test_rank_modules_scores_every_module_best_first(tiny_zoo, lite0, task_npz):
    rows = rank_modules(tiny_zoo, f"npz:{task_npz}", backbone=lite0, shots=8)
    assert {r["module"] for r in rows} == set(tiny_zoo.names()) | {BACKBONE_ROW}
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))
    assert [r for r in rows if r.get("reference")] == [r for r in rows if r["module"] == BACKBONE_ROW]
    assert all(r["images"] == rows[0]["images"] for r in rows) and rows[0]["images"] <= 3 * 16
    best = [r["module"] for r in rows if not r.get("reference")][:2]
    train_only = rank_modules(tiny_zoo, f"npz:{task_npz}", backbone=lite0, shots=8, use_val=False,
                              include_backbone=False)
    assert len(train_only) == 3 and train_only[0]["images"] == 3 * 8 < rows[0]["images"]
    assert top_modules(tiny_zoo, f"npz:{task_npz}", 2, backbone=lite0, shots=8) == best


def test_rank_refuses_dense_tasks(tiny_zoo, lite0):
    with pytest.raises(VimwError, match="dense"):
        rank_modules(tiny_zoo, "mnist-segmentation", backbone=lite0, max_images=50)


def test_cli_rank_prints_a_ranked_table(tiny_zoo, task_npz, capsys):
    assert main(["zoo", "rank", "--zoo", str(tiny_zoo.root), "--task", f"npz:{task_npz}", "--shots", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "module", "task", "LogME"] and len(lines) == 1 + 3 + 1
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3", "4"]

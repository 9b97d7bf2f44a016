"""Training runs leave per-epoch records: JSON lines kept with each zoo module, TensorBoard scalars."""

from __future__ import annotations

import json

import pytest

from vimw.cli.main import main
from vimw.zoo import Zoo


def test_zoo_train_keeps_the_json_lines_log_and_writes_tensorboard_events(tmp_path, task_npz):
    zoo_dir, board = tmp_path / "zoo", tmp_path / "board"
    code = main(["zoo", "train", "--zoo", str(zoo_dir), "--task", f"npz:{task_npz}", "--name", "logged",
                 "--epochs", "2", "--image-size", "40", "--no-progress", "--tensorboard", str(board)])
    assert code == 0
    records = [json.loads(line) for line in (Zoo(zoo_dir).module_dir("logged") / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all({"train_loss", "lr", "images_per_second", "val_score"} <= set(r) for r in records)
    assert Zoo(zoo_dir).verify() == []  # the log is part of the module, not a stray file

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(board))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train_loss", "val/score", "lr"} <= set(tags)
    assert [e.step for e in events.Scalars("val/score")] == [1, 2]
    logged = [e.value for e in events.Scalars("train_loss")]  # TensorBoard stores float32
    assert logged == [pytest.approx(r["train_loss"], rel=1e-6) for r in records]

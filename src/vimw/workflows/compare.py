"""Downstream methods side by side: same task, same shots, same seed, same loop.

Each method's learning rate is chosen on the validation split (never test) from a
small grid; the chosen model is then scored once on test. Used by the README demo and
by ``benchmarks/downstream.py``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from vimw.workflows.downstream import METHODS, train_downstream
from vimw.backbones import Backbone
from vimw.data import TaskData
from vimw.errors import VimwError
from vimw.training import TrainConfig, evaluate
from vimw.zoo import Zoo

# Settings searched per method on validation. Gates and heads tolerate large steps;
# a full backbone needs small ones. Learned gates get their own rate (see
# ``training.loop.parameter_groups``): with the head's rate they stay near uniform.
_HEAD_ONLY = ({"lr": 3e-3}, {"lr": 3e-2})
_GATED = ({"lr": 3e-3, "gate_lr": 0.05}, {"lr": 3e-2, "gate_lr": 0.05}, {"lr": 3e-2, "gate_lr": 0.5})
SEARCH_GRID: dict[str, tuple[dict, ...]] = {
    "linear_probe": _HEAD_ONLY,
    "scratch": ({"lr": 3e-3}, {"lr": 1e-2}),
    "full_ft": ({"lr": 3e-4}, {"lr": 1e-3}),
    "ens": _GATED,
    "topk": _GATED,
    "merge": _GATED,
    "uniform": _HEAD_ONLY,
    "single": _HEAD_ONLY,
}


@dataclass
class MethodRow:
    """One method's result on one task, shot count and seed: chosen settings, scores, cost."""

    task: str
    shots: int | None
    seed: int
    method: str
    lr: float
    gate_lr: float | None
    val: float
    test: float
    trainable: int
    seconds: float
    epochs: int  # ``seconds``: the chosen run's training time (the lr search ran len(grid) of them)

    def to_dict(self) -> dict:
        return asdict(self)


def few_shot_config(num_train: int, seed: int, target_steps: int = 120, batch_size: int = 32) -> TrainConfig:
    """Enough epochs for about ``target_steps`` optimiser steps, whatever the shot count."""
    steps_per_epoch = max(1, math.ceil(num_train / batch_size))
    epochs = max(3, math.ceil(target_steps / steps_per_epoch))
    return TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, warmup_fraction=0.1, weight_decay=1e-4)


def compare_methods(
    backbone: Backbone,
    data: TaskData,
    methods: Sequence[str],
    *,
    zoo: Zoo | None,
    seed: int,
    shots: int | None,
    target_steps: int = 120,
    grid: dict[str, tuple[dict, ...]] | None = None,
    on_result=None,
) -> list[MethodRow]:
    grid = {**SEARCH_GRID, **(grid or {})}
    base = few_shot_config(len(data.train), seed, target_steps)
    rows = []
    for method in methods:
        if method not in METHODS:
            raise VimwError(f"unknown method {method!r}; choose from {METHODS}")
        best = None
        for settings in grid[method]:
            config = base.replace(**settings)
            result = train_downstream(method, backbone, data, config, zoo=zoo)
            if best is None or result.val_score > best[1].val_score:
                best = (config, result)
        config, result = best
        test = evaluate(result.model, data.test, base.eval_batch_size)["score"]
        row = MethodRow(
            task=data.spec.name, shots=shots, seed=seed, method=method, lr=config.lr, gate_lr=config.gate_lr,
            val=result.val_score,
            test=test, trainable=result.trainable, seconds=round(result.seconds, 2),
            epochs=base.epochs,
        )
        rows.append(row)
        if on_result is not None:
            on_result(row, result)
    return rows


def summarise(rows: Sequence[MethodRow]) -> list[dict]:
    """Mean and spread (population std) of test accuracy per (task, shots, method)."""
    groups: dict[tuple, list[MethodRow]] = {}
    for row in rows:
        groups.setdefault((row.task, row.shots, row.method), []).append(row)
    summary = []
    for (task, shots, method), members in groups.items():
        tests = [m.test for m in members]
        summary.append({
            "task": task, "shots": shots, "method": method, "seeds": len(members),
            "test_mean": statistics.fmean(tests),
            "test_std": statistics.pstdev(tests) if len(tests) > 1 else 0.0,
            "trainable": members[0].trainable,
            "seconds_mean": statistics.fmean(m.seconds for m in members),
        })
    return summary


def format_table(summary: Sequence[dict]) -> str:
    """A markdown table: one row per (task, shots, method)."""
    lines = [
        "| task | shots | method | test acc (mean ± std) | seeds | trainable params | train time (s) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['task']} | {s['shots']} | {s['method']} | {s['test_mean']:.4f} ± {s['test_std']:.4f} | "
            f"{s['seeds']} | {s['trainable']:,} | {s['seconds_mean']:.1f} |"
        )
    return "\n".join(lines)

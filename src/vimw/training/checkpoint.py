"""Resumable training state: tensors in safetensors, everything else in JSON.

Layout of a checkpoint directory::

    state-<epoch>.safetensors  model.* (trainable tensors now), best.* (best so far by
                               validation), optim.<param>.<key> (AdamW moments), rng.torch
    state.json                 epoch, step, best score/epoch, history, settings, and the
                               name and sha256 of the tensors file it goes with

Each epoch's tensors go to a new file; only then is ``state.json`` atomically replaced
to point at it, and older tensor files are removed. A crash at any moment leaves a
``state.json`` that names a complete tensors file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vimw.errors import FormatError
from vimw.io import load_tensors, read_json, save_tensors, write_json
from vimw.io.names import CHECKPOINT_FORMAT, CHECKPOINT_TENSORS_FILE, CHECKPOINT_TENSORS_GLOB
from vimw.io.names import CHECKPOINT_STATE_FILE as STATE_JSON


@dataclass
class TrainingState:
    """What a checkpoint holds: progress, best epoch, model and optimiser state, RNG, settings."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best_score: float = float("-inf")
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    model: dict[str, torch.Tensor] = field(default_factory=dict)
    best: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    rng: torch.Tensor | None = None
    settings: dict = field(default_factory=dict)


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: str | os.PathLike, state: TrainingState) -> None:
    """Write ``state`` to ``directory`` (tensors in safetensors, the rest in JSON), atomically."""
    directory = Path(directory)
    optim_tensors, optim_meta = _flatten_optimizer(state.optimizer)
    tensors = {f"model.{k}": v for k, v in state.model.items()}
    tensors.update({f"best.{k}": v for k, v in state.best.items()})
    tensors.update(optim_tensors)
    if state.rng is not None:
        tensors["rng.torch"] = state.rng
    tensors_name = CHECKPOINT_TENSORS_FILE.format(epoch=state.epoch)
    digest = save_tensors(directory / tensors_name, tensors)
    best_score = state.best_score if state.best_score != float("-inf") else None
    write_json(
        directory / STATE_JSON,
        {
            "format": CHECKPOINT_FORMAT,
            "epoch": state.epoch,
            "step": state.step,
            "best_score": best_score,
            "best_epoch": state.best_epoch,
            "history": state.history,
            "optimizer": optim_meta,
            "settings": state.settings,
            "tensors_file": tensors_name,
            "tensors_sha256": digest,
        },
    )
    for stale in directory.glob(CHECKPOINT_TENSORS_GLOB):
        if stale.name != tensors_name:
            stale.unlink(missing_ok=True)
    # Temporary files of a save that was killed half-way (one writer per directory).
    for stale in directory.glob(".state*.tmp"):
        stale.unlink(missing_ok=True)


def has_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a checkpoint."""
    return (Path(directory) / STATE_JSON).is_file()


def load_checkpoint(directory: str | os.PathLike) -> TrainingState:
    """Read a checkpoint written by ``save_checkpoint``, checking its format."""
    directory = Path(directory)
    meta = read_json(directory / STATE_JSON)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise FormatError(f"{directory}: checkpoint format {meta.get('format')!r} is not supported")
    tensors_name = str(meta.get("tensors_file", ""))
    if not tensors_name.startswith("state-") or Path(tensors_name).name != tensors_name:
        raise FormatError(f"{directory / STATE_JSON}: invalid tensors file name {tensors_name!r}")
    tensors = load_tensors(directory / tensors_name, expected_sha256=meta["tensors_sha256"])

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    best_score = meta["best_score"]
    return TrainingState(
        epoch=int(meta["epoch"]),
        step=int(meta["step"]),
        best_score=float("-inf") if best_score is None else float(best_score),
        best_epoch=int(meta["best_epoch"]),
        history=list(meta["history"]),
        model=part("model."),
        best=part("best."),
        optimizer=_unflatten_optimizer(tensors, meta["optimizer"]),
        rng=tensors.get("rng.torch"),
        settings=dict(meta.get("settings", {})),
    )

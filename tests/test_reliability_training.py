"""Training under SIGKILL and NaN: resume from the last complete checkpoint, never store a broken module.

A real EfficientNet-Lite0 (40 px) trains a convpass module on a tiny synthetic task in a
child process that SIGKILLs itself: after the first checkpoint is written, then (on
resume) just before the second checkpoint's ``state.json`` is replaced, then in the
middle of writing the second checkpoint's tensors. Each time the directory must hold a
complete epoch-1 checkpoint; the final resumed run must finish all epochs and end with
exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.reliability import pattern_npz, report_counts
from helpers.reliability_worker import train_setup
from vimw.errors import FormatError, TrainingError
from vimw.training import fit
from vimw.training.checkpoint import load_checkpoint
from vimw.zoo import Zoo
from vimw.workflows.midstream import MidstreamRecipe, train_module

WORKER = Path(__file__).parent / "helpers" / "reliability_worker.py"
COUNTS = {"training crash points": 0}


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    report_counts(request.config, "training", COUNTS)


def _train_child(workdir: Path, npz: Path, kill: str) -> str:
    report = workdir.parent / "killed.txt"
    report.unlink(missing_ok=True)
    process = subprocess.run([sys.executable, str(WORKER), "train", str(workdir), str(npz), kill],
                             capture_output=True, timeout=300)
    assert process.returncode == -9, process.stderr.decode()[-3000:]
    return report.read_text()


def test_training_killed_three_times_resumes_from_its_last_checkpoint(tmp_path):
    npz = pattern_npz(tmp_path / "task.npz")
    work = tmp_path / "work"
    killed_at = [_train_child(work, npz, "epoch1")]
    assert load_checkpoint(work).epoch == 1
    first = (work / "state.json").read_bytes()
    # Resume; die before the epoch-2 state.json replaces the epoch-1 one (1st replace: tensors file).
    killed_at.append(_train_child(work, npz, "replace:2"))
    assert "state.json" in killed_at[-1]
    assert (work / "state.json").read_bytes() == first and load_checkpoint(work).epoch == 1
    # Resume; die while the epoch-2 tensors file is being written (1st fsync: its temporary file).
    killed_at.append(_train_child(work, npz, "fsync:1"))
    assert "state-00002" in killed_at[-1]
    assert (work / "state.json").read_bytes() == first and load_checkpoint(work).epoch == 1
    COUNTS["training crash points"] += len(killed_at)

    model, data, config = train_setup(npz)
    resumed = fit(model, data, config, checkpoint_dir=work, resume=True, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert load_checkpoint(work).epoch == 3
    assert sorted(p.name for p in work.iterdir()) == ["state-00003.safetensors", "state.json"]

    reference_model, _, _ = train_setup(npz)
    reference = fit(reference_model, data, config, progress=False)
    assert resumed.best_epoch == reference.best_epoch
    assert [round(r["val_loss"], 5) for r in resumed.history] == [round(r["val_loss"], 5) for r in reference.history]
    for key, value in reference_model.trainable_state().items():
        torch.testing.assert_close(model.trainable_state()[key], value, rtol=1e-5, atol=1e-6)


def test_an_absurd_learning_rate_is_refused_before_training(tmp_path):
    npz = pattern_npz(tmp_path / "task.npz")
    with pytest.raises(FormatError, match="lr=1e"):
        train_setup(npz)[2].replace(lr=1e30)


def test_nan_loss_stops_training_and_nothing_reaches_the_zoo(tmp_path, monkeypatch):
    npz = pattern_npz(tmp_path / "task.npz")
    model, _, _ = train_setup(npz)
    zoo = Zoo(tmp_path / "zoo")
    recipe = MidstreamRecipe("exploding", f"npz:{npz}", train=train_setup(npz)[2].replace(epochs=2))
    # A diverging run: the parameters blow up after the first optimiser step.
    real_step = torch.optim.AdamW.step

    def exploding_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for param in group["params"]:
                    param.mul_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", exploding_step)
    with pytest.raises(TrainingError, match="loss became (nan|inf)"):
        train_module(zoo, recipe, backbone=model.backbone)
    assert zoo.list() == [] and zoo.verify() == []
    assert not (zoo.root / "modules").exists() and not (zoo.root / "index.json").exists()

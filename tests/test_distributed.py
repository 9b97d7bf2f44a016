"""Midstream training under torchrun: 2 CPU processes on gloo give one sound module."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import IMAGE_SIZE, write_npz
from vimw.training import TrainConfig
from vimw.training import distributed as dist_utils
from vimw.zoo import Zoo
from vimw.workflows.midstream import MidstreamRecipe, train_module

EPOCHS, BATCH, LR = 3, 8, 1e-2
CHANCE = 1 / 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_shard_gives_every_rank_the_same_number_of_indices_covering_all():
    indices = torch.arange(11)
    shards = [dist_utils.shard(indices, rank, 3) for rank in range(3)]
    assert {len(s) for s in shards} == {4}
    assert set(torch.cat(shards).tolist()) == set(range(11))
    assert torch.equal(dist_utils.shard(indices, 0, 1), indices)


def test_single_process_reports_world_size_one():
    assert not dist_utils.init_from_env() or dist_utils.world_size() >= 1
    assert dist_utils.world_size() == 1 and dist_utils.rank() == 0 and dist_utils.is_main_process()
    assert dist_utils.average(0.25) == 0.25


@pytest.fixture(scope="module")
def easy_npz(tmp_path_factory) -> Path:
    return write_npz(tmp_path_factory.mktemp("ddp") / "bands.npz", n=150, pattern="bands")


@pytest.mark.slow
def test_torchrun_two_processes_train_one_sound_module(easy_npz, tmp_path, lite0):
    zoo_dir = tmp_path / "zoo"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VIMW_PROGRESS": "0", "MASTER_ADDR": "127.0.0.1"}
    env.pop("WORLD_SIZE", None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "vimw.cli", "zoo", "train", "--task", f"npz:{easy_npz}", "--zoo", str(zoo_dir), "--name", "ddp",
        "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", str(LR), "--image-size", str(IMAGE_SIZE),
        "--no-progress",
    ]
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("added ddp") == 1  # only rank 0 reports

    zoo = Zoo(zoo_dir)
    assert zoo.names() == ["ddp"] and zoo.verify() == []
    manifest = zoo.manifest("ddp")
    assert manifest.training["world_size"] == 2
    assert len(manifest.training["history"]) == EPOCHS
    module = zoo.load("ddp", lite0)  # loads on the single-process backbone
    assert module.num_parameters() == manifest.num_parameters

    # The same kind of result as one process with the same settings.
    single = train_module(
        Zoo(tmp_path / "single"),
        MidstreamRecipe("single", f"npz:{easy_npz}", train=TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR)),
        backbone=lite0, progress=False,
    )
    for result in (manifest, single):
        assert result.metrics["val_score"] >= CHANCE + 0.25
        assert result.metrics["test_accuracy"] >= CHANCE + 0.2
    assert abs(manifest.metrics["test_accuracy"] - single.metrics["test_accuracy"]) <= 0.35

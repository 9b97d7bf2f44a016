"""Parallel zoo builds: two worker processes on one machine, and one module per rank under torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IMAGE_SIZE, write_npz
from helpers.reliability import listing
from vimw.errors import VimwError
from vimw.training import TrainConfig
from vimw.workflows.midstream import MidstreamRecipe, build_zoo
from vimw.zoo import Zoo

PATTERNS = ("bands", "blocks")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def npz_tasks(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("parallel")
    return {p: write_npz(folder / f"{p}.npz", n=48, pattern=p, seed=i) for i, p in enumerate(PATTERNS)}


def recipes(npz_tasks) -> tuple[MidstreamRecipe, ...]:
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-2, eval_batch_size=64)
    return tuple(MidstreamRecipe(f"par-{p}", f"npz:{path}", train=config) for p, path in npz_tasks.items())


def test_two_jobs_train_modules_in_separate_processes_and_report_failures(npz_tasks, tmp_path, lite0):
    good = recipes(npz_tasks)
    bad = MidstreamRecipe("par-missing", f"npz:{tmp_path / 'absent.npz'}", train=good[0].train)
    # Every module is independent: one that fails is reported, the others land.
    with pytest.raises(VimwError, match="(?s)1 of 3 module\\(s\\) failed.*par-missing.*does not exist"):
        build_zoo(tmp_path / "zoo", good + (bad,), image_size=IMAGE_SIZE, jobs=2)
    zoo = Zoo(tmp_path / "zoo")
    assert zoo.names() == ["par-bands", "par-blocks"] and zoo.verify() == [] and zoo.leftovers() == []
    for name in zoo.names():
        manifest = zoo.manifest(name)
        assert manifest.training["world_size"] == 1 and manifest.training["seconds"] > 0
        assert manifest.task["dataset"].startswith("npz:")
        assert zoo.load(name, lite0).num_parameters() == manifest.num_parameters
    # Built modules are skipped: a second build starts no worker and changes nothing.
    before = listing(zoo.root)
    build_zoo(zoo.root, good, image_size=IMAGE_SIZE, jobs=2)
    assert listing(zoo.root) == before


@pytest.mark.parametrize("jobs", [0, -1, True])
def test_jobs_must_be_a_positive_integer(tmp_path, jobs):
    with pytest.raises(VimwError, match="jobs"):
        build_zoo(tmp_path / "zoo", (), jobs=jobs)


@pytest.mark.slow
def test_torchrun_builds_one_module_per_rank(npz_tasks, tmp_path):
    recipe = {"zoo": {"dir": str(tmp_path / "zoo"), "backbone": "efficientnet_lite0", "image_size": IMAGE_SIZE,
                      "modules": [{"name": f"rank-{p}", "task": f"npz:{path}",
                                   "train": {"epochs": 1, "batch_size": 16, "lr": 0.01}}
                                  for p, path in npz_tasks.items()]}}
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VIMW_PROGRESS": "0", "MASTER_ADDR": "127.0.0.1"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "vimw.cli", "zoo", "build", "--recipe", str(recipe_file), "--no-progress"]
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    zoo = Zoo(tmp_path / "zoo")
    assert zoo.names() == ["rank-bands", "rank-blocks"] and zoo.verify() == []
    # Each rank trained its own module alone (no gradient exchange between ranks).
    assert {zoo.manifest(n).training["world_size"] for n in zoo.names()} == {1}
    assert sum(line.startswith("name ") for line in proc.stdout.splitlines()) == 1  # only rank 0 lists the zoo

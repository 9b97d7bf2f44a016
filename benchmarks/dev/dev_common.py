"""What the development scripts share: seeds, a fixed image pool and test set per task, statistics.

Development seeds start at 100 (the evaluation uses 0-9). Each task's test set and its
pool of candidate training images are drawn once with a fixed seed of their own, so every
development seed and every method is scored on the same test images; a seed only picks
which pool images are the shots.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DEV = ROOT / "benchmarks" / "results" / "dev"
FEATURES = ROOT / "runs" / "dev" / "features"
DEV_SEEDS = list(range(100, 200))
POOL_SEED = 1000  # draws the pool and the test set, never a shot seed
POOL_PER_CLASS = 40  # candidate training images per class (shots and validation come from it)
MAX_TEST = 1000

def dev_parser(doc: str | None, seeds: int):
    """The options every development script takes: --zoo, --tasks, --shots, --seeds (a count from 100)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", default="runs/zoo")
    parser.add_argument("--tasks", nargs="+", default=["fmnist-footwear-bags", "digits8x8"])
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 2, 5, 10])
    parser.add_argument("--seeds", type=int, default=seeds, help="development seeds 100, 101, ...")
    return parser


def leave_overlap_out(zoo, task: str) -> list[str]:
    """The zoo's module names minus those that overlap ``task`` (computed from the manifests).

    The first runs (code at 5c317e8, before ``vimw.zoo.overlap``) dropped the ``mnist-*``
    modules for digits and nothing for footwear-and-bags: the same sets as computed now.
    """
    from vimw.zoo.overlap import leave_overlap_out as computed

    return computed(zoo, task)


def fixed_pool(task: str):
    """(pool, test) ImageSets: ``POOL_PER_CLASS`` training images per class and a fixed test set."""
    from vimw.data import load_task

    data = load_task(task, seed=POOL_SEED, val_fraction=0.0, max_test=MAX_TEST)
    generator = torch.Generator().manual_seed(POOL_SEED)
    targets = data.train.targets
    keep = []
    for c in range(data.num_classes):
        members = torch.nonzero(targets == c).flatten()
        keep.append(members[torch.randperm(len(members), generator=generator)[:POOL_PER_CLASS]])
    index = torch.sort(torch.cat(keep)).values
    return data.train.subset(index.numpy(), name=f"{task}/pool"), data.test


def _digest(images: torch.Tensor) -> torch.Tensor:
    """A fingerprint of an image tensor (shape and position-weighted sum), to match cached features to images."""
    flat = images.reshape(len(images), -1).double()
    weights = torch.arange(1, flat.shape[1] + 1, dtype=torch.float64)
    return torch.cat([torch.tensor(images.shape, dtype=torch.float64), flat @ weights])


def test_digest(images: torch.Tensor) -> float:
    """One number naming a test set, recorded with each unit (units on another test set never mix)."""
    return float(_digest(images).sum())


def cached_features(task: str, rep: str, split: str, images: torch.Tensor, compute=None) -> torch.Tensor | None:
    """Features of ``images`` under representation ``rep``, from the cache when it holds these very
    images; else ``compute()`` (stored), or None without ``compute``."""
    from vimw.io import load_tensors, save_tensors

    path = FEATURES / task / f"{rep.replace(':', '_')}-{split}.safetensors"
    digest = _digest(images)
    if path.exists():
        stored = load_tensors(path)
        if "digest" in stored and stored["digest"].shape == digest.shape and torch.equal(stored["digest"], digest):
            return stored["features"]
    if compute is None:
        return None
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, {"features": value.contiguous(), "digest": digest})
    return value


def sample_shots_from(targets: torch.Tensor, shots: int, seed: int, extra: int = 0) -> torch.Tensor:
    """Indices of ``shots`` images per class (then ``extra`` more per class, for validation), from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    first, second = [], []
    for c in range(int(targets.max()) + 1):
        members = torch.nonzero(targets == c).flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        first.append(order[:shots])
        second.append(order[shots:shots + extra])
    return torch.cat(first) if not extra else (torch.cat(first), torch.cat(second))


def paired_summary(mine: list[float], base: list[float]) -> dict:
    """Mean paired difference in points with a 95% t interval, and wins / losses."""
    from scipy import stats

    diffs = [100.0 * (a - b) for a, b in zip(mine, base)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "low": mean - half, "high": mean + half, "sd": sd, "n": n,
            "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs)}

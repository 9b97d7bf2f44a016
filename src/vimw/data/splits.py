"""Deterministic, stratified index splits: the only place randomness enters the data layer.

Every function takes per-image ``strata`` (the class used for stratification, an int
array) and a ``numpy.random.Generator`` and returns sorted int64 index arrays, so the
same inputs and seed give the same split on every machine. Classes are visited in
ascending order, each with its own permutation drawn from the one generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vimw.errors import DataError


def make_rng(seed: int, stream: int) -> np.random.Generator:
    """An independent generator per (seed, pipeline stage), so stages don't share draws."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(stream), int(seed)])


def _per_class(strata: np.ndarray) -> list[np.ndarray]:
    """Indices of each stratum present, strata ascending, indices ascending."""
    strata = np.asarray(strata)
    return [np.flatnonzero(strata == value) for value in np.unique(strata)]


def _sorted(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(parts)).astype(np.int64)


def split_by_fraction(
    strata: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``round(fraction * n_c)`` images of each class; returns (kept, held).

    Every class with at least two images keeps one and holds one out when
    ``0 < fraction < 1``, so tiny classes still appear on both sides.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"split fraction must be in [0, 1), got {fraction}")
    kept, held = [], []
    for members in _per_class(strata):
        order = rng.permutation(members)
        count = int(np.floor(fraction * len(order) + 0.5))
        if fraction > 0 and len(order) >= 2:
            count = min(max(count, 1), len(order) - 1)
        held.append(order[:count])
        kept.append(order[count:])
    return _sorted(kept), _sorted(held)


def allocate(counts: Sequence[int], total: int) -> np.ndarray:
    """Split ``total`` across classes proportionally to ``counts`` (largest remainder).

    The result sums exactly to ``total`` and never exceeds a class's count.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if not 0 <= total <= counts.sum():
        raise DataError(f"cannot take {total} images out of {int(counts.sum())}")
    quotas = counts * (total / max(int(counts.sum()), 1))
    shares = np.floor(quotas).astype(np.int64)
    # Ties go to the earlier class (stable sort), keeping the result deterministic.
    by_remainder = np.argsort(-(quotas - shares), kind="stable")
    shares[by_remainder[: total - int(shares.sum())]] += 1
    return shares


def split_by_count(
    strata: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out exactly ``count`` images, stratified; returns (kept, held)."""
    groups = _per_class(strata)
    shares = allocate([len(g) for g in groups], count)
    kept, held = [], []
    for members, share in zip(groups, shares):
        order = rng.permutation(members)
        held.append(order[:share])
        kept.append(order[share:])
    return _sorted(kept), _sorted(held)


def subsample(strata: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``min(count, n)`` stratified indices (all of them when ``count >= n``)."""
    if count >= len(strata):
        return np.arange(len(strata), dtype=np.int64)
    return split_by_count(strata, count, rng)[1]


def sample_shots(
    strata: np.ndarray,
    shots: int,
    val_per_class: int,
    rng: np.random.Generator,
    names: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """``shots`` images per class and up to ``val_per_class`` other ones; returns (shots, val).

    Both come from one permutation per class, so they are disjoint by construction.
    A class with fewer than ``shots`` images is an error (named, with its count): silently
    training on fewer shots would make few-shot results incomparable.
    """
    counts = np.bincount(np.asarray(strata, dtype=np.int64), minlength=len(names))
    short = [f"class {names[c]!r} has {int(counts[c])}" for c in range(len(names)) if counts[c] < shots]
    if short:
        raise DataError(
            f"cannot draw {shots} shots per class: {', '.join(short)} training image(s), "
            f"fewer than {shots}"
        )
    groups = _per_class(strata)
    chosen, val = [], []
    for members in groups:
        order = rng.permutation(members)
        chosen.append(order[:shots])
        val.append(order[shots : shots + val_per_class])
    return _sorted(chosen), _sorted(val)

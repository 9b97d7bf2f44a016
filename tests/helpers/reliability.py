"""Shared pieces of the reliability suite: tiny modules, zoo snapshots, kill hooks.

Nothing here is imported by vimw itself: kill points are installed by monkeypatching
``os.replace`` / ``os.fsync`` inside a child process, so production code carries no
test hooks.
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import numpy as np
import torch

from vimw.backbones.base import Site
from vimw.modules import ConvpassConfig, ModuleSet
from vimw.zoo import ModuleManifest

torch.set_num_threads(1)

SITES = (
    Site("b0", 0, 4, 4, 1, "nchw", 4),
    Site("b1", 1, 4, 8, 2, "nchw", 4),
)
FINGERPRINT = "f" * 64


class FakeBackbone:
    """Just what ``Zoo.load`` reads: an arch, a fingerprint and the sites."""

    arch = "fake-net"
    sites = SITES

    def __init__(self, fingerprint: str = FINGERPRINT) -> None:
        self._fingerprint = fingerprint

    def fingerprint(self) -> str:
        return self._fingerprint


def tiny_module(seed: int, hidden_dim: int = 2) -> ModuleSet:
    """A convpass module on ``SITES`` with seed-dependent (so distinct) weights."""
    module = ModuleSet.create(ConvpassConfig(hidden_dim=hidden_dim), SITES)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    return module


def tiny_manifest(name: str, fingerprint: str = FINGERPRINT, hidden_dim: int = 2) -> ModuleManifest:
    return ModuleManifest(
        name=name,
        module=ConvpassConfig(hidden_dim=hidden_dim).to_dict(),
        backbone={"arch": FakeBackbone.arch, "fingerprint": fingerprint, "image_size": 32},
        task={"name": "synthetic", "dataset": "synthetic", "num_classes": 2},
        weights={},
        metrics={"val_score": 0.5},
    )


def tiny_head(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(10_000 + seed)
    return {"fc.weight": torch.randn(2, 8, generator=generator), "fc.bias": torch.zeros(2)}


def add_tiny(zoo, name: str, seed: int, *, head: bool = True, overwrite: bool = False) -> ModuleManifest:
    return zoo.add(tiny_manifest(name), tiny_module(seed), tiny_head(seed) if head else None, overwrite=overwrite)


def file_digests(root: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path (for byte-identical checks)."""
    root = Path(root)
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def listing(root: str | os.PathLike) -> list[tuple[str, int, int]]:
    """Every path under ``root`` with its size and mtime: equal before/after = nothing written."""
    root = Path(root)
    rows = []
    for p in sorted(root.rglob("*")):
        stat = p.lstat()
        rows.append((str(p.relative_to(root)), stat.st_size if p.is_file() else -1, stat.st_mtime_ns))
    return rows


def install_kill(function: str, when: str, k: int, report: str | os.PathLike) -> None:
    """SIGKILL this process at the ``k``-th call of ``os.<function>`` (``before`` or ``after`` it).

    Writes what it killed at to ``report`` first, so the test can say which point it hit.
    """
    original = getattr(os, function)
    calls = {"n": 0}

    def hooked(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k and when == "before":
            _die(report, function, when, k, args)
        result = original(*args, **kwargs)
        if calls["n"] == k and when == "after":
            _die(report, function, when, k, args)
        return result

    setattr(os, function, hooked)


def _die(report, function, when, k, args) -> None:
    described = " -> ".join(str(a) for a in args if isinstance(a, (str, os.PathLike)))
    if not described and args and isinstance(args[0], int):
        try:
            described = os.readlink(f"/proc/self/fd/{args[0]}")
        except OSError:
            described = f"fd {args[0]}"
    fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, f"{when} {function} #{k}: {described}".encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def pattern_npz(path: str | os.PathLike, n_per_class: int = 16, classes: int = 2, size: int = 16, seed: int = 0) -> Path:
    """A small, learnable image classification set as ``.npz`` (a bright band per class)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    images = rng.integers(0, 60, size=(len(labels), size, size)).astype(np.int64)
    band = max(1, size // (classes + 1))
    for i, label in enumerate(labels):
        images[i, label * band : (label + 1) * band, :] += 190
    path = Path(path)
    np.savez(path, images=np.clip(images, 0, 255).astype(np.uint8), labels=labels.astype(np.int64))
    return path


def report_counts(config, label: str, counts: dict) -> None:
    """Print the suite's counts on the terminal (outside output capturing)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"reliability ({label}): " + ", ".join(f"{k}: {v}" for k, v in counts.items()))

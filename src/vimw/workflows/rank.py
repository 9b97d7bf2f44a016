"""Which zoo modules help a task, before training anything: LogME on features with the module plugged in.

For each module, the backbone (with that module at its sites) embeds the task's labelled
images (the training split and the validation split: what a user has, never the test
split); LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for
Transfer Learning", ICML 2021) then gives the log marginal evidence per image of a
Bayesian linear model from those features to the one-hot labels, with its prior and
noise precisions set by evidence maximisation. Higher means the labels are more
linearly predictable from the features: no learning rate, no epochs, one SVD per
module. ``rank_modules`` returns the modules best first, for ``vimw zoo rank`` and for
pre-selecting the modules an aggregation or ``auto`` works with.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vimw.backbones import Backbone, create_backbone
from vimw.data import TaskData, load_task
from vimw.data.kinds import DENSE_KINDS
from vimw.errors import VimwError
from vimw.zoo import Zoo

BACKBONE_ROW = "(backbone alone)"
_MAX_ITERATIONS = 100
_TOLERANCE = 1e-5


def logme(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """LogME of ``features`` (n x d) for integer ``labels`` (n): mean over classes of the
    per-image log evidence of ridge regression onto the class's indicator."""
    f = np.asarray(features, dtype=np.float64)
    y_all = np.asarray(labels).astype(np.int64)
    if f.ndim != 2 or len(f) != len(y_all) or len(f) < 2:
        raise VimwError(f"LogME needs n x d features and n labels (n >= 2), got {f.shape} and {y_all.shape}")
    if not np.isfinite(f).all():
        raise VimwError("LogME: the features contain NaN or infinite values")
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2
    rank = int((sigma > sigma.max() * 1e-12).sum()) if sigma.size and sigma.max() > 0 else 0
    u, sigma = u[:, :rank], sigma[:rank]
    scores = []
    for k in np.unique(y_all):
        y = (y_all == k).astype(np.float64)
        uy = u.T @ y
        outside = max(float(y @ y - uy @ uy), 0.0)  # the part of y no feature direction reaches
        alpha, beta = 1.0, 1.0
        for _ in range(_MAX_ITERATIONS):
            t = alpha / beta
            gamma = float((sigma / (sigma + t)).sum())
            m2 = float((sigma * uy**2 / (sigma + t) ** 2).sum())
            res2 = float(((t / (sigma + t)) ** 2 * uy**2).sum()) + outside
            alpha = gamma / max(m2, 1e-12)
            beta = max(n - gamma, 1e-12) / max(res2, 1e-12)
            if abs(alpha / beta - t) / t < _TOLERANCE:
                break
        t = alpha / beta
        m2 = float((sigma * uy**2 / (sigma + t) ** 2).sum())
        res2 = float(((t / (sigma + t)) ** 2 * uy**2).sum()) + outside
        log_det = float(np.log(alpha + beta * sigma).sum()) + (d - rank) * math.log(alpha)
        evidence = (n * math.log(beta) + d * math.log(alpha) - n * math.log(2 * math.pi)
                    - beta * res2 - alpha * m2 - log_det) / 2
        scores.append(evidence / n)
    return float(np.mean(scores))


@torch.no_grad()
def embed(backbone: Backbone, images: torch.Tensor, module=None, batch_size: int = 256) -> torch.Tensor:
    """Pooled features of uint8 ``images`` with ``module`` (a ``ModuleSet`` or None) plugged in."""
    device = next(backbone.parameters()).device
    bypass = module.bypass if module is not None else None
    out = [backbone.forward_features(backbone.preprocess(images[i : i + batch_size].to(device)), bypass).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def zoo_backbone(zoo: Zoo, image_size: int | None = None) -> Backbone:
    """The backbone the zoo's modules were trained on, at their input size unless told otherwise."""
    entries = zoo.list()
    if not entries:
        raise VimwError(f"the zoo {zoo.root} has no modules to rank")
    manifest = zoo.manifest(entries[0][0])
    source = manifest.backbone.get("source") or manifest.backbone.get("arch")
    return create_backbone(source, image_size=image_size or manifest.backbone.get("image_size"))


RANK_MAX_IMAGES = 2000  # images a ranking scores at most (LogME on more adds time, not order)


def rank_modules(
    zoo: Zoo,
    task: str | TaskData,
    *,
    shots: int | None = None,
    seed: int = 0,
    max_images: int | None = RANK_MAX_IMAGES,
    image_size: int | None = None,
    backbone: Backbone | None = None,
    names: list[str] | None = None,
    include_backbone: bool = True,
    use_val: bool = True,
    skip_bad: bool = False,
) -> list[dict]:
    """Every module of ``zoo`` scored for ``task``, best first (and the bare backbone as a reference row).

    ``task``: a task name (loaded with ``shots`` / ``seed``, at most ``max_images``
    training images) or an already loaded ``TaskData``; only its train and validation
    splits are read (train alone with ``use_val=False``, e.g. when validation is kept
    for choosing among methods afterwards). Each row: module, its midstream task and kind, LogME ``score``,
    ``images`` scored; the reference row has ``reference: True``. ``skip_bad``: a user
    folder's unreadable images are left out instead of stopping the ranking.
    """
    data = task if isinstance(task, TaskData) else load_task(
        task, shots=shots, seed=seed, max_train=None if shots else max_images, skip_bad=skip_bad)
    if data.kind in DENSE_KINDS:
        raise VimwError(f"task {data.spec.name!r} is a dense ({data.kind}) task; zoo rank scores image-level tasks")
    backbone = backbone or zoo_backbone(zoo, image_size)
    fingerprint = backbone.fingerprint()
    index = zoo.read_index()
    names = names or [n for n, e in sorted(index.items()) if e.get("fingerprint") == fingerprint]
    if not names:
        raise VimwError(f"the zoo {zoo.root} has no module for backbone {backbone.arch}")
    parts = [data.train, data.val] if use_val and len(data.val) else [data.train]
    images = torch.cat([p.images for p in parts])
    labels = torch.cat([p.targets for p in parts]).numpy()
    if max_images and len(images) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(images), max_images, replace=False))
        images, labels = images[keep], labels[keep]
    rows = []
    for name in names:
        module = zoo.load(name, backbone)
        rows.append({"module": name, "task": index[name].get("task"), "kind": index[name].get("kind"),
                     "score": logme(embed(backbone, images, module), labels), "images": len(images)})
    rows.sort(key=lambda r: -r["score"])
    if include_backbone:
        rows.append({"module": BACKBONE_ROW, "task": None, "kind": None, "reference": True,
                     "score": logme(embed(backbone, images), labels), "images": len(images)})
        rows.sort(key=lambda r: -r["score"])
    return rows


def top_modules(zoo: Zoo, task: str | TaskData, k: int, **kwargs) -> list[str]:
    """The ``k`` best-ranked module names for ``task`` (what an aggregation can pre-select)."""
    rows = rank_modules(zoo, task, include_backbone=False, **kwargs)
    return [r["module"] for r in rows[:k]]

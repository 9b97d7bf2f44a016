"""Prediction on image files: a downstream model's or a backbone's own classes, top-k with probabilities.

One path for every caller: ``vimw predict``, the demo and the server (``vimw serve``) all
build a :class:`Predictor` and read :class:`Prediction` rows from it, so the same image
gives the same classes and probabilities whichever door it came in by.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vimw.errors import DataError, VimwError


@dataclass(frozen=True)
class Prediction:
    """The ``top`` classes of one image: ``(probability, class index, class name)``, best first."""

    source: str
    classes: tuple[tuple[float, int, str], ...]

    def to_dict(self) -> dict:
        return {"source": self.source,
                "top": [{"class": name, "index": index, "probability": p} for p, index, name in self.classes]}


@dataclass
class Predictor:
    """What turns images into class probabilities: preprocessing, a logit function, class names."""

    class_names: tuple[str, ...]
    image_size: int
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    logits: Callable[[torch.Tensor], torch.Tensor]  # preprocessed pixels -> N x C logits
    description: str = ""

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``N x C`` softmax probabilities of uint8 images ``N x C x H x W`` at ``image_size``."""
        with torch.inference_mode():
            return self.logits(self.preprocess(images)).float().softmax(-1)

    def predict(self, images: torch.Tensor, sources: Sequence[str], top: int = 5) -> list[Prediction]:
        """The ``top`` classes of each image (``sources`` names them in the result)."""
        return top_classes(self.probabilities(images), sources, self.class_names, top)


def check_top(top: int) -> int:
    """``top`` as a positive class count (a clear error otherwise)."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise VimwError(f"the number of classes to print must be a positive integer, got {top!r}")
    return top


def top_classes(probabilities: torch.Tensor, sources: Sequence[str], class_names: Sequence[str],
                top: int) -> list[Prediction]:
    """One :class:`Prediction` per row of ``probabilities`` (ties keep the lower class index)."""
    check_top(top)
    k = min(top, probabilities.shape[-1])
    best = probabilities.topk(k, dim=-1)
    rows = []
    for source, values, indices in zip(sources, best.values.tolist(), best.indices.tolist()):
        rows.append(Prediction(str(source), tuple((p, i, class_names[i]) for p, i in zip(values, indices))))
    return rows


def format_predictions(predictions: Sequence[Prediction]) -> str:
    """Each image's name, then one line per class: probability, index, name."""
    lines = []
    for row in predictions:
        lines.append(row.source)
        lines += [f"  {p:6.3f}  {index:4d}  {name}" for p, index, name in row.classes]
    return "\n".join(lines)


def model_predictor(model, manifest: dict, source: str = "") -> Predictor:
    """A :class:`Predictor` for a loaded downstream model (refuses dense models: no image class)."""
    from vimw.data.kinds import DENSE_KINDS

    if model.kind in DENSE_KINDS:
        # Its logits are per pixel (N x C x H x W): a top-k over them would be meaningless.
        raise VimwError(f"{source or 'the model'} is a {model.kind} model (one class per pixel); prediction "
                        "gives image classes. Use 'vimw evaluate' for its mIoU.")
    names = manifest.get("class_names") or [str(i) for i in range(model.head_config.num_classes)]
    return Predictor(tuple(names), model.backbone.preprocess.size, model.backbone.preprocess, model,
                     f"{manifest.get('method', 'downstream')} model {source}".strip())


def load_predictor(*, model: str | os.PathLike | None = None, backbone: str = "efficientnet_lite0",
                   zoo: str | os.PathLike | None = None) -> Predictor:
    """A downstream model's predictor (``model``: its directory), else ``backbone``'s ImageNet head."""
    if model:
        from vimw.aggregation import load_downstream

        downstream, manifest = load_downstream(model, zoo_dir=zoo)
        return model_predictor(downstream, manifest, str(model))
    from vimw.backbones import create_backbone

    network = create_backbone(backbone)
    if not network.has_classifier:
        raise VimwError(f"backbone {backbone!r} has no classifier of its own; predict with a downstream --model")

    def logits(pixels: torch.Tensor) -> torch.Tensor:
        return network.classify(network(pixels))

    return Predictor(tuple(network.class_names), network.preprocess.size, network.preprocess, logits,
                     f"{network.arch} ImageNet classifier")


def read_images(paths: Sequence[str | os.PathLike], size: int, *, skip_bad: bool = False
                ) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
    """Image files as one uint8 batch at ``size``: ``(images, kept paths, skipped (path, why))``.

    Grey images are repeated to RGB when others are colour. An unreadable file stops the
    run with a message naming it, unless ``skip_bad``, which leaves it out and says why.
    """
    from vimw.data import read_image

    pixels, kept, skipped = [], [], []
    for path in paths:
        try:
            pixels.append(read_image(Path(path), size))
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append((str(path), str(exc)))
            continue
        kept.append(str(path))
    if not pixels:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8), kept, skipped
    if any(p.shape[0] == 3 for p in pixels):
        pixels = [p.expand(3, -1, -1) if p.shape[0] == 1 else p for p in pixels]
    return torch.stack(pixels), kept, skipped


def predict_files(paths: Sequence[str | os.PathLike], predictor: Predictor, *, top: int = 5,
                  batch_size: int = 64, skip_bad: bool = False) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Predictions for image files, ``batch_size`` at a time: ``(predictions, skipped files)``."""
    check_top(top)
    if not paths:
        raise DataError("no image files given")
    predictions: list[Prediction] = []
    skipped: list[tuple[str, str]] = []
    for start in range(0, len(paths), batch_size):
        images, kept, bad = read_images(paths[start:start + batch_size], predictor.image_size, skip_bad=skip_bad)
        skipped += bad
        if kept:
            predictions += predictor.predict(images, kept, top)
    return predictions, skipped


__all__ = ["Prediction", "Predictor", "check_top", "format_predictions", "load_predictor", "model_predictor", "predict_files",
           "read_images", "top_classes"]

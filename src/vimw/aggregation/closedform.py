"""A head in closed form: ridge on frozen features, lambda and temperature by exact leave-one-out.

With 1-2 images per class a head trained by gradient on augmented views, its epoch chosen
on two validation images per class, is both noisy and poor: on the development tasks a
trained linear probe scored 0.33 where a ridge head on the same frozen features scored
0.47 (8x8 digits, 1 shot; ``benchmarks/results/dev/NOTES.md``). The ridge head has no
training seed, no epochs and needs no validation images: lambda is chosen by the exact
leave-one-out loss of ``gatefit.ridge_loo_loss``, and a temperature that turns its scores
into calibrated logits by the leave-one-out cross-entropy of the same residuals.

When a class has a single image, leaving it out leaves the class without an example, so
nothing can be chosen by leave-one-out: lambda and temperature are then the fixed
defaults below (set on development tasks, never on evaluation ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vimw.aggregation.gatefit import centred_dual, loo_residuals, one_hot
from vimw.errors import VimwError

HEAD_LAMBDAS = (1e-2, 1e-1, 1.0, 10.0)  # relative to the mean centred feature energy
TEMPERATURES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
ONE_SHOT_LAMBDA = 1.0
ONE_SHOT_TEMPERATURE = 10.0


@dataclass
class RidgeHead:
    """A linear head ``logits = temperature * (W f + b)`` and how it was chosen."""

    weight: torch.Tensor  # classes x D
    bias: torch.Tensor  # classes
    lam: float
    temperature: float
    chosen_by: str  # "leave-one-out" or "fixed (a class has one image)"
    loo_accuracy: float | None
    loo_log_loss: float | None

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``temperature * (W f + b)`` for rows of ``features``, in the head's precision."""
        return self.temperature * (features.to(self.weight.dtype) @ self.weight.T + self.bias)

    def to_dict(self) -> dict:
        rounded = {k: (None if v is None else round(v, 6)) for k, v in
                   (("loo_accuracy", self.loo_accuracy), ("loo_log_loss", self.loo_log_loss))}
        return {"lam": self.lam, "temperature": self.temperature, "chosen_by": self.chosen_by, **rounded}


def fit_ridge_head(features: torch.Tensor, targets: torch.Tensor, num_classes: int) -> RidgeHead:
    """Ridge regression of one-hot targets on ``features`` (``n x D``), with an intercept."""
    n = features.shape[0]
    counts = torch.bincount(targets.long().cpu(), minlength=num_classes)
    if num_classes < 2 or bool((counts == 0).any()):  # two classes of one image each still fit (fixed defaults)
        raise VimwError(f"a closed-form head needs an image of every one of the {num_classes} classes (at least 2)")
    gram, energy = centred_dual(features)
    f = features.to(torch.float64)
    y = one_hot(targets, num_classes).to(gram.device)
    y_mean, f_mean = y.mean(0, keepdim=True), f.mean(0, keepdim=True)
    yc = y - y_mean
    if bool((counts < 2).any()):
        lam, temperature, chosen_by, accuracy, log_loss = ONE_SHOT_LAMBDA, ONE_SHOT_TEMPERATURE, \
            "fixed (a class has one image)", None, None
    else:
        best = None
        for lam in HEAD_LAMBDAS:
            scores = y - loo_residuals(gram, energy, yc, lam)  # each image scored by a head that never saw it
            for temperature in TEMPERATURES:
                loss = float(nn.functional.cross_entropy(temperature * scores, targets.long().to(scores.device)))
                if best is None or loss < best[0]:
                    accuracy = float((scores.argmax(1) == targets.to(scores.device)).double().mean())
                    best = (loss, lam, temperature, accuracy)
        log_loss, lam, temperature, accuracy = best
        chosen_by = "leave-one-out"
    dual = torch.linalg.solve(gram + lam * energy * torch.eye(n, dtype=gram.dtype, device=gram.device), yc)
    weight = (f - f_mean).T @ dual  # D x classes
    bias = y_mean.squeeze(0) - (f_mean @ weight).squeeze(0)
    return RidgeHead(weight.T.contiguous(), bias, float(lam), float(temperature), chosen_by, accuracy, log_loss)


@torch.no_grad()
def fit_closed_form_head(model, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 256) -> RidgeHead:
    """Fit ``model``'s linear head in closed form on its frozen features of ``images`` (un-augmented).

    Everything below the head (backbone, plug-in) must be frozen: the head is exact for
    the features it was fitted on. Returns what was chosen; the head is set in place.
    """
    below = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    if below:
        raise VimwError(f"a closed-form head needs everything below it frozen; {below[0]} trains")
    if not isinstance(getattr(model.head, "fc", None), nn.Linear):
        raise VimwError("a closed-form head needs a linear classification head")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    bypass = model.bypass()
    features = torch.cat([model.backbone.forward_features(model.backbone.preprocess(images[i:i + batch_size].to(device)),
                                                          bypass) for i in range(0, len(images), batch_size)])
    model.train(was_training)
    fitted = fit_ridge_head(features, targets.to(device), model.head_config.num_classes)
    set_linear_head(model.head.fc, fitted)
    return fitted


def set_linear_head(head: nn.Linear, fitted: RidgeHead) -> None:
    """Write ``fitted`` (temperature included) into ``head``."""
    if tuple(head.weight.shape) != tuple(fitted.weight.shape):
        raise VimwError(f"the head is {tuple(head.weight.shape)}, the fitted one {tuple(fitted.weight.shape)}")
    with torch.no_grad():
        head.weight.copy_(fitted.temperature * fitted.weight)
        head.bias.copy_(fitted.temperature * fitted.bias)


__all__ = ["HEAD_LAMBDAS", "ONE_SHOT_LAMBDA", "ONE_SHOT_TEMPERATURE", "RidgeHead", "TEMPERATURES",
           "fit_closed_form_head", "fit_ridge_head", "set_linear_head"]

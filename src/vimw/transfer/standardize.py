"""Per-sample standardisation of logit vectors (SPEC 2.2).

Every model's logits live on their own scale (a CLIP's ``100 * cos``, a linear head's raw
scores); TransMiter works on ``s = (z - mean_k z) / (std_k z + eps)``, computed per sample
over all K logits, and maps its output back with the *input's* own statistics.

``std`` is the unbiased standard deviation over the K logits (``torch.std``'s default).
"""

from __future__ import annotations

import torch

EPS = 1e-6


def standardize(z: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(s, mean, std)`` with ``s = (z - mean) / (std + eps)`` over the last dimension.

    ``mean`` and ``std`` keep the reduced dimension (shape ``... x 1``) so that
    ``destandardize(s, mean, std, eps)`` inverts this exactly (up to rounding).
    """
    if z.dim() < 1 or z.shape[-1] < 2:
        raise ValueError(f"standardize needs at least 2 logits per sample, got shape {tuple(z.shape)}")
    mean = z.mean(dim=-1, keepdim=True)
    std = z.std(dim=-1, keepdim=True)
    return (z - mean) / (std + eps), mean, std


def destandardize(s: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Inverse of :func:`standardize`: ``s * (std + eps) + mean``."""
    return s * (std + eps) + mean

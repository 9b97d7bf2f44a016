"""Regularised orthogonal Procrustes alignment between two models' logits (SPEC 2.4).

Given standardised logits of the same N unlabeled images under the source model (S, N x K)
and the target model (T, N x K), find the orthogonal Q0 that rotates the target into the
source's basis, ``T Q0 ~ S``, pulled toward the identity by ``lambda``::

    Q0 = argmax_Q tr(Q^T (T^T S + lambda I))  =  U V^T,   U S' V^T = svd(T^T S + lambda I)

which minimises ``||T Q - S||_F^2 + lambda ||Q - I||_F^2`` over orthogonal Q.

About lambda. The data term ``T^T S`` is a sum over images, so it grows with N while the
pull ``lambda I`` does not: the reference's ``lambda = 500`` was tuned for its own unlabeled
set (16 shots of the base classes, on the order of a thousand images with augmented views).
vimw expresses lambda *per image* and multiplies it by N (:func:`normalised_lambda`), so the
same setting means the same balance for any N; ``0.5`` per image is about the reference's
balance (500 / ~1000 images). Tune it on labelled validation data
(:func:`vimw.transfer.choose_lambda`), never on test data.

Mean direction. Standardised rows are orthogonal to the all-ones vector, so ``T^T S`` is
exactly singular along it and, at ``lambda = 0``, the SVD may pair that direction with a
sign flip. We add ``J = 1 1^T / K`` (weight 1) to the matrix before the SVD: the ones vector
is a singular vector of every term, so this changes nothing else (and nothing at all for
``lambda > 0`` beyond the singular value), but pins ``Q0 1 = 1``.
"""

from __future__ import annotations

import torch

DEFAULT_LAMBDA_PER_IMAGE = 0.5


def normalised_lambda(lam_per_image: float, n_images: int) -> float:
    """The Procrustes regulariser for N images: ``lam_per_image * n_images``."""
    if lam_per_image < 0:
        raise ValueError(f"lambda must be >= 0, got {lam_per_image}")
    if n_images < 1:
        raise ValueError(f"need at least one image, got n_images={n_images}")
    return float(lam_per_image) * int(n_images)


@torch.no_grad()
def orthogonal_alignment(source_std: torch.Tensor, target_std: torch.Tensor, lam: float) -> torch.Tensor:
    """Q0 (K x K, orthogonal, float64) such that ``target_std @ Q0 ~ source_std``.

    ``lam`` is the absolute regulariser (see :func:`normalised_lambda`). Both inputs are the
    *standardised* logits of the same images, row for row.
    """
    if source_std.dim() != 2 or source_std.shape != target_std.shape:
        raise ValueError(
            f"source and target logits must both be N x K with the same shape, got "
            f"{tuple(source_std.shape)} and {tuple(target_std.shape)}"
        )
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")
    s = source_std.detach().to(torch.float64)
    t = target_std.detach().to(torch.float64)
    if not (torch.isfinite(s).all() and torch.isfinite(t).all()):
        raise ValueError("logits contain NaN or infinite values")
    k = s.shape[1]
    m = t.T @ s
    m = m + float(lam) * torch.eye(k, dtype=torch.float64, device=m.device)
    m = m + torch.full((k, k), 1.0 / k, dtype=torch.float64, device=m.device)
    u, _, vh = torch.linalg.svd(m)
    return u @ vh


__all__ = ["DEFAULT_LAMBDA_PER_IMAGE", "normalised_lambda", "orthogonal_alignment"]

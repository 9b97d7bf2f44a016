"""Gate math as pure functions: softmax gates over the zoo, top-k, parameter merging."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def softmax_gates(logits: torch.Tensor, available: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last dimension; modules absent at a site (``available`` False) get 0."""
    if available is not None:
        logits = logits.masked_fill(~available, float("-inf"))
    return torch.softmax(logits, dim=-1)


def topk_gates(logits: torch.Tensor, k: int, available: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax renormalised over the ``k`` largest logits of each row; the rest are exactly 0."""
    if available is not None:
        logits = logits.masked_fill(~available, float("-inf"))
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top, True)
    return torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)


def merge_parameters(
    states: Sequence[Mapping[str, torch.Tensor]], weights: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * states[i][key]`` for every key (modules of one shape)."""
    keys = states[0].keys()
    return {key: sum(w * state[key] for w, state in zip(weights, states)) for key in keys}


def gate_entropy(gates: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of gates (in nats): 0 for one-hot, log N for uniform."""
    return -(gates.clamp_min(1e-12).log() * gates).sum(-1)

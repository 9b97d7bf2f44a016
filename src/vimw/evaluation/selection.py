"""The one rule that chooses among candidates: epochs, learning rates, blends, methods.

Every choice vimw makes on held-out data goes through :func:`best_candidate`, so an epoch,
a learning rate, a TransMiter blend and a downstream method are all picked the same way.

With a few shots, validation accuracy ties often (40 images give 41 possible values), and
a strict ``>`` then keeps whichever candidate came first. The default criterion therefore
breaks accuracy ties by the lower validation loss, which keeps resolving differences that
accuracy cannot see; ``"loss"`` selects on the loss alone.

Pure functions on plain mappings: no torch, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from vimw.errors import VimwError

CRITERIA = ("score", "loss")
DEFAULT_CRITERION = "score"
# Two scores closer than this are a tie (accuracies are ratios of small integers).
SCORE_TIE = 1e-9
# The default rule in words, for what vimw prints and records.
SELECTION_RULE = ("highest validation accuracy; accuracy ties (within 1e-9) broken by the lower validation loss, "
                  "then by the earlier candidate")


def _number(metrics: Mapping[str, float], key: str) -> float:
    value = metrics.get(key)
    if value is None:
        return math.nan
    return float(value)


def selection_key(metrics: Mapping[str, float], criterion: str = DEFAULT_CRITERION) -> tuple[float, float]:
    """A sort key where larger is better.

    ``"score"``: higher ``metrics["score"]`` first, then lower ``metrics["loss"]``.
    ``"loss"``: lower ``metrics["loss"]`` first, then higher score. NaN ranks last.
    """
    if criterion not in CRITERIA:
        raise VimwError(f"unknown selection criterion {criterion!r}; choose from {CRITERIA}")
    score, loss = _number(metrics, "score"), _number(metrics, "loss")
    score = -math.inf if math.isnan(score) else score
    neg_loss = -math.inf if math.isnan(loss) else -loss
    return (score, neg_loss) if criterion == "score" else (neg_loss, score)


def is_better(candidate: Mapping[str, float], incumbent: Mapping[str, float] | None,
              criterion: str = DEFAULT_CRITERION) -> bool:
    """Whether ``candidate`` beats ``incumbent`` (``None`` is beaten by anything).

    Scores within :data:`SCORE_TIE` of each other count as equal, so the loss decides;
    a full tie keeps the incumbent (the earlier candidate).
    """
    if incumbent is None:
        return True
    new, old = selection_key(candidate, criterion), selection_key(incumbent, criterion)
    if criterion == "score" and abs(new[0] - old[0]) <= SCORE_TIE:
        return new[1] > old[1]
    return new > old


def best_candidate(
    candidates: Sequence[Mapping[str, float]],
    criterion: str = DEFAULT_CRITERION,
    eligible: Sequence[bool] | None = None,
) -> int:
    """Index of the best candidate by :func:`is_better`; earlier candidates win full ties.

    ``eligible`` (same length) excludes candidates that must never be kept, such as
    epochs that end inside the learning-rate warm-up.
    """
    if eligible is not None and len(eligible) != len(candidates):
        raise VimwError(f"{len(eligible)} eligibility flags for {len(candidates)} candidates")
    best: int | None = None
    for index, metrics in enumerate(candidates):
        if eligible is not None and not eligible[index]:
            continue
        if best is None or is_better(metrics, candidates[best], criterion):
            best = index
    if best is None:
        raise VimwError("no eligible candidate to select from")
    return best


__all__ = ["CRITERIA", "DEFAULT_CRITERION", "best_candidate", "is_better", "selection_key"]

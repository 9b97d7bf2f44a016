"""Option types shared by every command: numbers with their range checked at parse time.

An out-of-range value is refused with one line naming the option and the range
(``vimw: error: argument --shots: must be >= 1, got 0``), before anything loads or trains.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(kind: type, *, minimum: float | None = None, maximum: float | None = None,
           strict: bool = False) -> Callable[[str], int | float]:
    """An argparse ``type`` parsing ``kind`` and refusing values outside ``[minimum, maximum]``.

    ``strict``: the minimum itself is refused too (``> minimum``).
    """

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if minimum is not None and (value <= minimum if strict else value < minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum:g}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {text}")
        return value

    parse.__name__ = kind.__name__  # what argparse names in its messages
    return parse


positive_int = number(int, minimum=1)
nonneg_int = number(int, minimum=0)
positive_float = number(float, minimum=0, strict=True)
nonneg_float = number(float, minimum=0)
fraction = number(float, minimum=0, maximum=1)


__all__ = ["fraction", "nonneg_float", "nonneg_int", "number", "positive_float", "positive_int"]

"""What every command's parser shares: numbers with their range checked at parse time,
directory arguments, and a parser whose own errors are one ``vimw: error:`` line.

An out-of-range value is refused with one line naming the option and the range
(``vimw: error: argument --shots: must be >= 1, got 0``), before anything loads or trains.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from vimw.errors import VimwError

SKIP_BAD_HELP = ("leave out image files that cannot be read (corrupt, truncated, not an image), saying how many "
                 "and which, instead of stopping at the first")


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are a ``VimwError`` (``vimw: error: ...``, exit 2),
    not argparse's usage block; sub-parsers made by ``add_subparsers`` are of this class too."""

    def error(self, message: str):
        raise VimwError(message)


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
    parse.bounds = (minimum, maximum, strict)  # read by the test that tries every option's bounds
    return parse


positive_int = number(int, minimum=1)
nonneg_int = number(int, minimum=0)
positive_float = number(float, minimum=0, strict=True)
nonneg_float = number(float, minimum=0)
fraction = number(float, minimum=0, maximum=1)


def directory(noun: str, *, must_exist: bool, made_by: str = "") -> Callable[[str], str]:
    """An argparse ``type`` for a directory argument (a ``noun``): a file there is refused,
    and with ``must_exist`` a missing directory too."""

    def parse(text: str) -> str:
        path = Path(text).expanduser()
        if path.exists() and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a file; a {noun} is a directory{made_by}")
        above = next((p for p in path.absolute().parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: {above} is a file, not a directory")
        if must_exist and not path.exists():
            raise argparse.ArgumentTypeError(f"no {noun} at {text}: the directory does not exist")
        return text

    parse.__name__ = "directory"
    return parse


_ZOO_MADE_BY = " (made by 'vimw zoo build' or 'vimw zoo train')"
_zoo_directory = directory("zoo", must_exist=True, made_by=_ZOO_MADE_BY)
zoo_to_write = directory("zoo", must_exist=False, made_by=_ZOO_MADE_BY)  # a zoo to add to (created if missing)


def zoo_to_read(text: str) -> str:
    """An argparse ``type`` for a zoo to read: a directory that is empty or holds a zoo's index or
    modules (another vimw directory, such as a downstream model, is named for what it is not)."""
    from vimw.io.names import MANIFEST_FILE, ZOO_INDEX_FILE, ZOO_MODULES_DIR

    path = Path(_zoo_directory(text)).expanduser()
    if any(path.iterdir()) and not ((path / ZOO_INDEX_FILE).is_file() or (path / ZOO_MODULES_DIR).is_dir()):
        model = " (it looks like a downstream model)" if (path / MANIFEST_FILE).is_file() else ""
        raise argparse.ArgumentTypeError(f"{text} is not a zoo: it has no {ZOO_INDEX_FILE} and no "
                                         f"{ZOO_MODULES_DIR}/{model}")
    return text


__all__ = ["SKIP_BAD_HELP", "Parser", "directory", "fraction", "nonneg_float", "nonneg_int", "number",
           "positive_float", "positive_int", "zoo_to_read", "zoo_to_write"]

"""Progress bars for long work: shown on a terminal, on rank 0 only, silent otherwise."""

from __future__ import annotations

import os
import sys

from vimw.training import distributed as dist_utils


def progress_enabled(requested: bool | None = None) -> bool:
    """``requested`` wins (rank 0 only); ``None`` means: on a terminal, unless VIMW_PROGRESS=0."""
    if requested is not None:
        return bool(requested) and dist_utils.is_main_process()
    if os.environ.get("VIMW_PROGRESS", "") == "0":
        return False
    return dist_utils.is_main_process() and bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "it"):
    """A tqdm bar that vanishes when done (``leave=False``); a no-op when not ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)


def progress_write(message: str) -> None:
    """Print a line without breaking an active bar."""
    from tqdm.auto import tqdm

    tqdm.write(message)


__all__ = ["progress_bar", "progress_enabled", "progress_write"]

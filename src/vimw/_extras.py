"""Import optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import contextlib
import importlib
from types import ModuleType

from vimw.errors import MissingExtraError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise a ``MissingExtraError`` telling which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the optional package '{module}'. "
            f"Install it with: pip install 'vimw[{extra}]'"
        ) from exc


@contextlib.contextmanager
def quiet_loading(transformers: ModuleType):
    """transformers without its weight-loading progress bar: a local load takes milliseconds, and
    the bar's carriage returns garble vimw's own lines (the setting is restored afterwards)."""
    progress = transformers.utils.logging
    was_on = progress.is_progress_bar_enabled()
    progress.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            progress.enable_progress_bar()

"""One exception hierarchy for everything vimw refuses to do.

Every error a user can cause (bad data, a corrupt file, a module on the wrong
backbone, a missing optional dependency) is a ``VimwError`` subclass with a
message that says what went wrong and where, so callers can catch one type.
"""

from __future__ import annotations


class VimwError(Exception):
    """Base class of every error vimw raises on purpose."""


class DataError(VimwError, ValueError):
    """A dataset or task cannot be built: empty, unreadable, labels out of range..."""


class ImageReadError(DataError):
    """An image file cannot be read (missing, corrupt, not an image); commands that read a
    user's folder can leave such files out (``--skip-bad-images``)."""


class FormatError(VimwError, ValueError):
    """A file on disk is corrupt, truncated, of an unknown version or unsafe to load."""


class IntegrityError(FormatError):
    """A file's checksum does not match the one recorded for it."""


class BackboneMismatchError(VimwError, ValueError):
    """A module or model was made for another backbone than the one it is offered to."""


class RegistryError(VimwError, KeyError):
    """A name (backbone, module kind, task...) is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class MissingExtraError(VimwError, ImportError):
    """An optional dependency is needed; the message names the pip extra."""


class TrainingError(VimwError, RuntimeError):
    """Training cannot go on (for example the loss became NaN)."""


class BusyError(VimwError, RuntimeError):
    """Another process is writing the same thing now (its lock is held)."""

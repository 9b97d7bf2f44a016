"""Crash-safe file writes and a simple inter-process lock.

A write goes to a temporary file in the destination's directory, is flushed and
fsynced, then renamed over the destination: a reader (or a crash) sees either the
old file or the new one, never half of one. A crash can leave a temporary file
(``.<name>.<random>.tmp``) behind; it is never read, and ``Zoo.repair`` removes the
ones in a zoo.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    # Read without changing it where the kernel tells (Linux >= 4.7); else set-and-restore.
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename (or a new entry) in ``directory`` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_fsync_dir = fsync_dir  # old private name


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` crash-safely: a temporary file in the same directory, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        # mkstemp creates 0600 files; a zoo is shared, so honour the umask like open() does.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``atomic_write_bytes`` for text (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like an ``atomic_write_bytes`` temporary file."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def sha256_bytes(data: bytes) -> str:
    """The sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True, what: str = "") -> Iterator[None]:
    """Exclusive advisory lock held on ``path`` (created if needed) for the block's duration.

    The kernel drops the lock when the holder dies, so a killed writer never leaves a
    stale lock behind. ``wait=False``: raise ``BusyError`` (naming ``what``) instead of
    waiting when another process holds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            from vimw.errors import BusyError

            raise BusyError(f"another vimw process is writing {what or path.parent} now; "
                            "wait for it to finish, or write somewhere else") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def lock_is_held(path: str | os.PathLike) -> bool:
    """Whether a live process holds ``file_lock(path)`` now (a missing file: no)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)

"""A strict reader for IDX files (the MNIST/Fashion-MNIST format), gzip or plain.

Layout: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per
dimension, then the values. We read only unsigned bytes (type 0x08), the one type these
datasets use, and insist that the payload length matches the header exactly: a
truncated download must fail loudly rather than yield fewer images.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from vimw.errors import FormatError

_UBYTE = 0x08


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise FormatError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc


def parse_idx(data: bytes, source: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Decode IDX bytes into a uint8 array; ``source`` names the file in errors."""
    if len(data) < 4:
        raise FormatError(f"{source}: too short for an IDX header ({len(data)} bytes)")
    zero, dtype_code, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != _UBYTE:
        raise FormatError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000{_UBYTE:02x}NN, "
            "unsigned bytes)"
        )
    if ndim is not None and dims != ndim:
        raise FormatError(f"{source}: expected {ndim} IDX dimensions, found {dims}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise FormatError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{dims}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    found = len(data) - header
    if found != expected:
        state = "truncated" if found < expected else "has trailing bytes"
        raise FormatError(
            f"{source}: IDX file {state}: header {shape} needs {expected} bytes of data, found {found}"
        )
    # Copy so the array owns writable memory (torch.from_numpy warns on read-only buffers).
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` is decompressed); errors name the file."""
    path = Path(path)
    return parse_idx(_read_bytes(path), source=str(path), ndim=ndim)

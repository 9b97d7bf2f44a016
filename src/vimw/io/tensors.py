"""Tensors are stored in safetensors and nothing else (no pickle is ever loaded)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vimw.errors import FormatError, IntegrityError
from vimw.io.atomic import atomic_write_bytes, sha256_bytes

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
# torch.save writes a zip archive (or, in old versions, a bare pickle stream).
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> str:
    """Write ``tensors`` atomically; return the sha256 of the bytes written."""
    from safetensors.torch import save

    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise FormatError(f"{path}: {key!r} is a {type(value).__name__}, not a tensor; nothing was written")
    try:
        data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    except Exception as exc:  # shared storage, bad metadata...
        raise FormatError(f"{path}: cannot serialise these tensors ({exc}); nothing was written") from exc
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_tensors(path: str | os.PathLike, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file, optionally checking its sha256 first.

    Refuses pickle-based formats (by name and by content) and reports truncated or
    corrupt files as ``FormatError`` naming the file; a checksum mismatch is an
    ``IntegrityError``.
    """
    from safetensors.torch import load

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise FormatError(
            f"{path}: refusing to load a pickle-based file ({path.suffix}); "
            "vimw only loads tensors from .safetensors files"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise FormatError(f"{path}: weights file is missing") from exc
    except OSError as exc:  # a directory, no permission...
        raise FormatError(f"{path}: weights file cannot be read ({exc.strerror or exc})") from exc
    if expected_sha256 is not None:
        actual = sha256_bytes(data)
        if actual != expected_sha256:
            raise IntegrityError(
                f"{path}: sha256 mismatch (recorded {str(expected_sha256)[:16]}..., "
                f"file has {actual[:16]}...); the file was modified or corrupted"
            )
    if data.startswith(_PICKLE_MAGIC):
        raise FormatError(
            f"{path}: this is a pickle / torch.save file, not safetensors; refusing to load it "
            "(unpickling can run arbitrary code)"
        )
    try:
        tensors = load(data)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # safetensors' own errors; a Rust panic is a BaseException
        raise FormatError(f"{path}: not a valid safetensors file ({type(exc).__name__}: {exc})") from exc
    return tensors

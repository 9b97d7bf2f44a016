"""Tensors are stored in safetensors and nothing else (no pickle is ever loaded)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vimw.errors import FormatError, IntegrityError
from vimw.io.atomic import atomic_write_bytes, sha256_bytes

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> str:
    """Write ``tensors`` atomically; return the sha256 of the bytes written."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_tensors(path: str | os.PathLike, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file, optionally checking its sha256 first.

    Refuses pickle-based formats by name and reports truncated or corrupt files as
    ``FormatError`` naming the file.
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
    if expected_sha256 is not None:
        actual = sha256_bytes(data)
        if actual != expected_sha256:
            raise IntegrityError(
                f"{path}: sha256 mismatch (recorded {expected_sha256[:16]}..., "
                f"file has {actual[:16]}...); the file was modified or corrupted"
            )
    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise FormatError(f"{path}: not a valid safetensors file ({exc})") from exc

"""JSON metadata files: atomic writes, a format version, clear errors on bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vimw.errors import FormatError
from vimw.io.atomic import atomic_write_text


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise FormatError(f"{path}: file is missing") from exc
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not UTF-8 text ({exc})") from exc
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(payload, dict):
        raise FormatError(f"{path}: expected a JSON object at the top level, found {type(payload).__name__}")
    return payload

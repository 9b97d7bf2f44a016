"""JSON metadata files: atomic writes, a format version, clear errors on bad input.

Only standard JSON is read and written: ``NaN`` and ``Infinity`` are refused both ways
(they are not JSON, and a NaN metric usually means a broken run).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from vimw.errors import FormatError
from vimw.io.atomic import atomic_write_text


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def dumps_json(payload: dict[str, Any], where: str = "JSON") -> str:
    """The text ``write_json`` writes; ``FormatError`` for NaN, Inf or non-JSON values."""
    try:
        return json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError as exc:
        raise FormatError(f"{where}: cannot write NaN or infinite values to JSON ({exc})") from exc
    except (TypeError, RecursionError) as exc:
        raise FormatError(f"{where}: cannot write this value as JSON ({exc})") from exc


def unmeasured_as_null(value: Any) -> Any:
    """``value`` with every NaN float replaced by ``None`` (JSON null), recursively.

    For records where NaN means "not measured" (a validation score with no held-out image, at
    1 shot or when a cross-validation was cut short); infinities are left to be refused."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: unmeasured_as_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [unmeasured_as_null(v) for v in value]
    return value


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically; refuses values JSON cannot hold."""
    # Serialise first: a payload that cannot be written leaves the old file untouched.
    atomic_write_text(path, dumps_json(payload, where=str(path)))


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object; a missing, unreadable or invalid file raises ``FormatError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise FormatError(f"{path}: file is missing") from exc
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not UTF-8 text ({exc})") from exc
    except OSError as exc:  # a directory, no permission...
        raise FormatError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        payload = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except RecursionError as exc:
        raise FormatError(f"{path}: invalid JSON (nested too deeply)") from exc
    except ValueError as exc:  # NaN/Infinity, or an integer with too many digits
        raise FormatError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(payload, dict):
        raise FormatError(f"{path}: expected a JSON object at the top level, found {type(payload).__name__}")
    return payload

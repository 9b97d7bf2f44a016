"""The module manifest (``manifest.json``): what a zoo module is, validated on load.

Format version 1. Unknown keys from a newer vimw are kept out with a warning; a newer
*format* is refused, since its meaning may have changed.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from vimw.errors import FormatError
from vimw.io.names import MODULE_FORMAT, MODULE_HEAD_FILE, MODULE_WEIGHTS_FILE
from vimw.version import __version__

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")

REQUIRED_KEYS = ("format", "name", "module", "backbone", "task", "weights")


def check_module_name(name: str) -> str:
    """A zoo name is also a directory name: no separators, no leading dot."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise FormatError(
            f"invalid module name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (at most 100 characters)"
        )
    return name


def utc_now() -> str:
    """The current time in UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class ModuleManifest:
    """What a zoo module is: kind and config, backbone record, task, weights, metrics, training."""

    name: str
    module: dict  # the module kind's config (``ModuleConfig.to_dict``)
    backbone: dict  # arch, fingerprint, image_size
    task: dict  # the midstream task's spec
    weights: dict  # file, sha256
    num_parameters: int = 0
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    head: dict = field(default_factory=dict)  # optional: config, file, sha256
    created: str = field(default_factory=utc_now)
    vimw_version: str = __version__
    format: int = MODULE_FORMAT

    @property
    def kind(self) -> str:
        """The module kind."""
        return str(self.module.get("kind", "?"))

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the backbone the module was trained on."""
        return str(self.backbone.get("fingerprint", ""))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def index_entry(self) -> dict[str, Any]:
        """The summary kept in the zoo index, enough to list and search without opening files."""
        return {
            "kind": self.kind,
            "task": self.task.get("name"),
            "dataset": self.task.get("dataset"),
            "backbone": self.backbone.get("arch"),
            "fingerprint": self.fingerprint,
            "num_parameters": self.num_parameters,
            "score": self.metrics.get("val_score"),
            "sha256": self.weights.get("sha256"),
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any], where: str = "manifest") -> "ModuleManifest":
        """Validate a manifest read from JSON; ``FormatError`` says which key is wrong and where.

        Unknown keys (a newer vimw adding optional metadata) are ignored with a warning;
        a newer ``format`` is refused, since the meaning of known keys may have changed.
        """
        if not isinstance(payload, dict):
            raise FormatError(f"{where}: a manifest must be a JSON object, found {type(payload).__name__}")
        missing = [k for k in REQUIRED_KEYS if k not in payload]
        if missing:
            raise FormatError(f"{where}: missing required keys {missing}")
        version = payload["format"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise FormatError(f"{where}: invalid format version {version!r}")
        if version > MODULE_FORMAT:
            raise FormatError(
                f"{where}: format version {version} is newer than this vimw supports ({MODULE_FORMAT}); upgrade vimw"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            warnings.warn(f"{where}: ignoring unknown keys {unknown} (written by a newer vimw?)", stacklevel=2)
        for key in ("module", "backbone", "task", "weights", "metrics", "training", "head"):
            if key in payload and not isinstance(payload[key], dict):
                raise FormatError(f"{where}: '{key}' must be an object, found {type(payload[key]).__name__}")
        for key in ("name", "created", "vimw_version"):
            if key in payload and not isinstance(payload[key], str):
                raise FormatError(f"{where}: '{key}' must be a string, found {type(payload[key]).__name__}")
        weights = payload["weights"]
        if not isinstance(weights.get("sha256"), str) or not isinstance(weights.get("file"), str):
            raise FormatError(f"{where}: 'weights' needs string 'file' and 'sha256'")
        if weights["file"] != MODULE_WEIGHTS_FILE:
            raise FormatError(
                f"{where}: weights file must be {MODULE_WEIGHTS_FILE!r}, found {weights['file']!r} "
                "(modules are only loaded from safetensors, never from pickle files)"
            )
        if not SHA256_PATTERN.fullmatch(weights["sha256"]):
            raise FormatError(f"{where}: 'weights.sha256' must be 64 lowercase hex digits, found {weights['sha256']!r}")
        head = payload.get("head", {})
        if "file" in head or "sha256" in head:
            if head.get("file") != MODULE_HEAD_FILE or not SHA256_PATTERN.fullmatch(str(head.get("sha256"))):
                raise FormatError(
                    f"{where}: 'head' needs file {MODULE_HEAD_FILE!r} and a 64-hex-digit 'sha256', "
                    f"found file {head.get('file')!r}"
                )
        if not isinstance(payload["backbone"].get("fingerprint"), str):
            raise FormatError(f"{where}: 'backbone' needs a string 'fingerprint'")
        if not isinstance(payload["module"].get("kind"), str):
            raise FormatError(f"{where}: 'module' needs a string 'kind'")
        num_parameters = payload.get("num_parameters", 0)
        if isinstance(num_parameters, bool) or not isinstance(num_parameters, int) or num_parameters < 0:
            raise FormatError(f"{where}: 'num_parameters' must be a non-negative integer, found {num_parameters!r}")
        try:
            check_module_name(payload["name"])
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None
        return cls(**{k: v for k, v in payload.items() if k in known})

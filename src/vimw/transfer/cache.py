"""On-disk cache of zero-shot logits (the "one pass of each model over the unlabeled set").

One entry per (model name, image set id, class list sha256, prompt template): a directory
``<root>/<key>/`` holding ``logits.safetensors`` (the N x K logits) and ``manifest.json``
(model, template, class list, auxiliary word list sha256, image set id, N, the tensor file's
sha256). Both are written atomically through :mod:`vimw.io`, the manifest last, under a file
lock so concurrent writers do not race.

On read: a missing entry, or a manifest that disagrees with the request (another N, another
auxiliary word list, another format version...) means *recompute*; a corrupt file (bad JSON,
bad safetensors, sha256 mismatch) raises ``FormatError`` - never silently trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vimw.errors import FormatError
from vimw.io import file_lock, load_tensors, read_json, save_tensors, write_json
from vimw.io.names import LOGIT_CACHE_FILE as LOGITS_FILE
from vimw.io.names import LOGIT_CACHE_FORMAT as FORMAT
from vimw.io.names import LOGIT_CACHE_FORMAT_VERSION as FORMAT_VERSION
from vimw.io.names import MANIFEST_FILE
from vimw.transfer.vocab import class_list_sha256
from vimw.version import __version__


class LogitCache:
    """Zero-shot logits cached under ``root``, keyed by model, image set, class list and template."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @staticmethod
    def key(model_name: str, image_set_id: str, class_names: Sequence[str], template: str) -> str:
        payload = json.dumps(
            [str(model_name), str(image_set_id), class_list_sha256(class_names), str(template)], ensure_ascii=True
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]

    def entry_dir(self, model_name: str, image_set_id: str, class_names: Sequence[str], template: str) -> Path:
        return self.root / self.key(model_name, image_set_id, class_names, template)

    def _expected(
        self,
        model_name: str,
        image_set_id: str,
        class_names: Sequence[str],
        template: str,
        aux_words_sha256: str | None,
        num_images: int | None,
    ) -> dict[str, Any]:
        expected: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": str(model_name),
            "image_set_id": str(image_set_id),
            "class_names": [str(n) for n in class_names],
            "class_list_sha256": class_list_sha256(class_names),
            "template": str(template),
            "aux_words_sha256": aux_words_sha256,
        }
        if num_images is not None:
            expected["num_images"] = int(num_images)
        return expected

    def load(
        self,
        model_name: str,
        image_set_id: str,
        class_names: Sequence[str],
        template: str,
        *,
        aux_words_sha256: str | None = None,
        num_images: int | None = None,
    ) -> torch.Tensor | None:
        """The cached logits, or ``None`` when absent or made for another request.

        Raises ``FormatError`` when the entry exists but is corrupt.
        """
        directory = self.entry_dir(model_name, image_set_id, class_names, template)
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.exists():
            return None
        manifest = read_json(manifest_path)  # FormatError on corrupt JSON
        expected = self._expected(model_name, image_set_id, class_names, template, aux_words_sha256, num_images)
        if any(manifest.get(k) != v for k, v in expected.items()):
            return None
        logits_path = directory / manifest.get("logits_file", LOGITS_FILE)
        if not logits_path.exists():
            return None
        tensors = load_tensors(logits_path, manifest.get("logits_sha256"))  # FormatError / IntegrityError
        logits = tensors.get("logits")
        n, k = manifest.get("num_images"), len(expected["class_names"])
        if logits is None or logits.dim() != 2 or tuple(logits.shape) != (n, k):
            raise FormatError(
                f"{logits_path}: expected a 'logits' tensor of shape ({n}, {k}), "
                f"found {None if logits is None else tuple(logits.shape)}"
            )
        return logits

    def save(
        self,
        model_name: str,
        image_set_id: str,
        class_names: Sequence[str],
        template: str,
        logits: torch.Tensor,
        *,
        aux_words_sha256: str | None = None,
    ) -> Path:
        if logits.dim() != 2 or logits.shape[1] != len(class_names):
            raise ValueError(f"logits must be N x {len(class_names)}, got {tuple(logits.shape)}")
        directory = self.entry_dir(model_name, image_set_id, class_names, template)
        directory.mkdir(parents=True, exist_ok=True)
        sha = save_tensors(directory / LOGITS_FILE, {"logits": logits.detach().float().cpu()}, metadata={"format": FORMAT})
        manifest = self._expected(model_name, image_set_id, class_names, template, aux_words_sha256, logits.shape[0])
        manifest.update({"logits_file": LOGITS_FILE, "logits_sha256": sha, "vimw_version": __version__})
        write_json(directory / MANIFEST_FILE, manifest)
        return directory

    def get_or_compute(
        self,
        model_name: str,
        image_set_id: str,
        class_names: Sequence[str],
        template: str,
        compute: Callable[[], torch.Tensor],
        *,
        aux_words_sha256: str | None = None,
        num_images: int | None = None,
    ) -> torch.Tensor:
        """Return the cached logits or run ``compute()`` (-> N x K), store and return them.

        ``num_images``, when known, is checked against the cached N (a mismatch recomputes).
        """
        directory = self.entry_dir(model_name, image_set_id, class_names, template)
        with file_lock(self.root / f".{directory.name}.lock"):
            cached = self.load(
                model_name, image_set_id, class_names, template,
                aux_words_sha256=aux_words_sha256, num_images=num_images,
            )
            if cached is not None:
                return cached
            logits = compute()
            if not isinstance(logits, torch.Tensor):
                raise TypeError(f"compute() must return a tensor, got {type(logits).__name__}")
            if num_images is not None and logits.shape[0] != num_images:
                raise ValueError(f"compute() returned {logits.shape[0]} rows, expected num_images={num_images}")
            self.save(model_name, image_set_id, class_names, template, logits, aux_words_sha256=aux_words_sha256)
            return logits.detach().float().cpu()


__all__ = ["LogitCache"]

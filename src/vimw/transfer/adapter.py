"""The TransMiter adapter: an identity-initialised residual map in logit space (SPEC 2.2).

::

    s  = (z - mean_k z) / (std_k z + 1e-6)        # per sample, over all K logits
    [s = s Q]                                     # only for a transferred adapter (SPEC 2.4)
    h  = s W^T                                    # W: K x K, orthogonal
    h' = h + MLP(h)                               # LN(K) -> Linear(K, mK) -> GELU -> Linear(mK, K)
    o  = h' W
    [o = o Q^T]
    z' = o * (std_k z + 1e-6) + mean_k z          # the INPUT's own statistics
    task logits = z'[:, :C]

The MLP's last layer is zero-initialised, so a new adapter is exactly the identity. ``W`` is
kept orthogonal by ``torch.nn.utils.parametrizations.orthogonal`` (trivialisation around a
base matrix, so the initial random orthogonal matrix is represented exactly). The default map
is the Cayley map: it is about 7x cheaper than the matrix exponential at K = 1024 on CPU and
gives the same manifold constraint.

A *transferred* adapter (``f_target(s) = f_source(s Q) Q^T``) is the same class with the
``rotation`` buffer ``Q`` set; its weights are the source adapter's, untouched.

Files: ``adapter.safetensors`` (the state dict: the parametrisation's ``original`` and
``base``, the MLP, the rotation if any, plus the materialised ``W`` for checking) and
``manifest.json`` (model names, K, C, auxiliary word list sha256, prompt template, settings,
vimw version), both written atomically through :mod:`vimw.io`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from vimw.errors import FormatError
from vimw.io import load_tensors, read_json, save_tensors, write_json
from vimw.io.names import ADAPTER_FORMAT as FORMAT
from vimw.io.names import ADAPTER_FORMAT_VERSION as FORMAT_VERSION
from vimw.io.names import ADAPTER_WEIGHTS_FILE as WEIGHTS_FILE
from vimw.io.names import MANIFEST_FILE
from vimw.transfer.standardize import EPS, destandardize, standardize
from vimw.version import __version__

_MATERIALISED_KEY = "materialised.W"
_ORTHOGONAL_MAPS = ("cayley", "matrix_exp", "householder")


def random_orthogonal(k: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A Haar-random ``k x k`` orthogonal matrix drawn from ``seed`` (QR with sign fix)."""
    gen = torch.Generator().manual_seed(int(seed))
    a = torch.randn(k, k, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.to(dtype)


class _Orthogonal(nn.Module):
    """Holds the K x K orthogonal matrix ``W`` as a parametrised ``weight``."""

    def __init__(self, k: int, orthogonal_map: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(k))
        orthogonal(self, "weight", orthogonal_map=orthogonal_map, use_trivialization=True)


class TransMiterAdapter(nn.Module):
    """Logit-space adapter over K logits, of which the first C are the task's classes.

    Args:
        num_logits: K, the number of zero-shot logits (task classes + auxiliary classes).
        num_classes: C <= K, the task's classes (the first C columns).
        hidden_mult: width of the MLP's hidden layer, as a multiple of K (4 in the reference).
        seed: seeds the random orthogonal initialisation of ``W`` and the MLP's first layer.
        orthogonal_map: ``"cayley"`` (default), ``"matrix_exp"`` or ``"householder"``.
    """

    rotation: torch.Tensor | None

    def __init__(
        self,
        num_logits: int = 1024,
        num_classes: int | None = None,
        *,
        hidden_mult: int = 4,
        seed: int = 0,
        orthogonal_map: str = "cayley",
    ) -> None:
        super().__init__()
        k = int(num_logits)
        c = k if num_classes is None else int(num_classes)
        if k < 2:
            raise ValueError(f"num_logits must be at least 2, got {k}")
        if not 1 <= c <= k:
            raise ValueError(f"num_classes must be in [1, num_logits={k}], got {c}")
        if int(hidden_mult) < 1:
            raise ValueError(f"hidden_mult must be a positive integer, got {hidden_mult}")
        if orthogonal_map not in _ORTHOGONAL_MAPS:
            raise ValueError(f"orthogonal_map must be one of {_ORTHOGONAL_MAPS}, got {orthogonal_map!r}")
        self.num_logits = k
        self.num_classes = c
        self.hidden_mult = int(hidden_mult)
        self.seed = int(seed)
        self.orthogonal_map = orthogonal_map

        self.rot = _Orthogonal(k, orthogonal_map)
        with torch.no_grad():
            self.rot.weight = random_orthogonal(k, seed)
        hidden = self.hidden_mult * k
        self.mlp = nn.Sequential(nn.LayerNorm(k), nn.Linear(k, hidden), nn.GELU(), nn.Linear(hidden, k))
        gen = torch.Generator().manual_seed(int(seed) + 1)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(k)  # nn.Linear's default range, drawn from our own generator
            self.mlp[1].weight.uniform_(-bound, bound, generator=gen)
            self.mlp[1].bias.uniform_(-bound, bound, generator=gen)
            self.mlp[3].weight.zero_()
            self.mlp[3].bias.zero_()
        self.register_buffer("rotation", None)

    # -- the orthogonal matrix ---------------------------------------------------------
    @property
    def W(self) -> torch.Tensor:  # noqa: N802  (the paper's name)
        return self.rot.weight

    def set_rotation(self, rotation: torch.Tensor | None) -> "TransMiterAdapter":
        """Set (or clear, with ``None``) the transfer rotation ``Q`` (K x K, orthogonal)."""
        if rotation is None:
            self.rotation = None
            return self
        k = self.num_logits
        if tuple(rotation.shape) != (k, k):
            raise ValueError(f"rotation must be {k} x {k}, got {tuple(rotation.shape)}")
        ref = self.mlp[1].weight
        self.rotation = rotation.detach().to(device=ref.device, dtype=ref.dtype).clone()
        return self

    # -- forward ------------------------------------------------------------------------
    def forward(self, z: torch.Tensor, *, return_all: bool = False) -> torch.Tensor:
        """Adapt logits ``z`` (N x K); return the first C columns, or all K with ``return_all``."""
        if z.dim() != 2 or z.shape[1] != self.num_logits:
            raise ValueError(f"expected logits shaped N x {self.num_logits}, got {tuple(z.shape)}")
        s, mean, std = standardize(z, EPS)
        out = self.forward_standardized(s)
        out = destandardize(out, mean, std, EPS)
        return out if return_all else out[:, : self.num_classes]

    def forward_standardized(self, s: torch.Tensor) -> torch.Tensor:
        """The map on standardised logits (all K columns), including the rotation if set."""
        q = self.rotation
        if q is not None:
            s = s @ q
        w = self.W
        h = s @ w.T
        h = h + self.mlp(h)
        o = h @ w
        if q is not None:
            o = o @ q.T
        return o

    def extra_repr(self) -> str:
        return (
            f"num_logits={self.num_logits}, num_classes={self.num_classes}, hidden_mult={self.hidden_mult}, "
            f"orthogonal_map={self.orthogonal_map!r}, transferred={self.rotation is not None}"
        )

    def config(self) -> dict[str, Any]:
        return {
            "num_logits": self.num_logits,
            "num_classes": self.num_classes,
            "hidden_mult": self.hidden_mult,
            "seed": self.seed,
            "orthogonal_map": self.orthogonal_map,
        }

    # -- files ---------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, **manifest_fields: Any) -> Path:
        """``save_adapter(self, directory, ...)``: the manifest fields are its keyword arguments."""
        return save_adapter(self, directory, **manifest_fields)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "TransMiterAdapter":
        return load_adapter(directory)[0]


def save_adapter(
    adapter: TransMiterAdapter,
    directory: str | os.PathLike,
    *,
    source_model: str,
    aux_words_sha256: str | None,
    template: str,
    target_model: str | None = None,
    class_names: list[str] | None = None,
    settings: dict[str, Any] | None = None,
) -> Path:
    """Write ``adapter.safetensors`` then ``manifest.json`` (the manifest last, as the commit mark)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu() for k, v in adapter.state_dict().items()}
    with torch.no_grad():
        tensors[_MATERIALISED_KEY] = adapter.W.detach().cpu().clone()
    sha = save_tensors(directory / WEIGHTS_FILE, tensors, metadata={"format": FORMAT})
    if class_names is not None and len(class_names) != adapter.num_logits:
        raise ValueError(f"class_names has {len(class_names)} names, the adapter has K={adapter.num_logits} logits")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vimw_version": __version__,
        **adapter.config(),
        "transferred": adapter.rotation is not None,
        "source_model": source_model,
        "target_model": target_model,
        "aux_words_sha256": aux_words_sha256,
        "template": template,
        "class_names": list(class_names) if class_names is not None else None,
        "settings": dict(settings or {}),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha,
    }
    write_json(directory / MANIFEST_FILE, manifest)
    return directory


def load_adapter(directory: str | os.PathLike) -> tuple[TransMiterAdapter, dict[str, Any]]:
    """Load an adapter saved by :func:`save_adapter`; return ``(adapter, manifest)``.

    Raises ``FormatError`` for a missing/corrupt file, an unknown format, or any mismatch
    between the manifest and the tensors (shapes, keys, the materialised ``W``).
    """
    directory = Path(directory)
    manifest = read_json(directory / MANIFEST_FILE)
    where = directory / MANIFEST_FILE
    if manifest.get("format") != FORMAT:
        raise FormatError(f"{where}: not a TransMiter adapter (format={manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise FormatError(f"{where}: unsupported format_version {manifest.get('format_version')!r}")
    try:
        k = int(manifest["num_logits"])
        c = int(manifest["num_classes"])
        mult = int(manifest["hidden_mult"])
        seed = int(manifest.get("seed", 0))
        omap = str(manifest.get("orthogonal_map", "cayley"))
        transferred = bool(manifest["transferred"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{where}: missing or invalid field ({exc})") from exc
    tensors = load_tensors(directory / manifest.get("weights_file", WEIGHTS_FILE), manifest.get("weights_sha256"))
    try:
        adapter = TransMiterAdapter(k, c, hidden_mult=mult, seed=seed, orthogonal_map=omap)
    except ValueError as exc:
        raise FormatError(f"{where}: {exc}") from exc
    materialised = tensors.pop(_MATERIALISED_KEY, None)
    if transferred != ("rotation" in tensors):
        raise FormatError(f"{where}: manifest says transferred={transferred} but the weights disagree")
    if transferred:
        adapter.set_rotation(torch.eye(k))  # placeholder so the buffer exists; load_state_dict fills it
    expected = {name: tuple(t.shape) for name, t in adapter.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        wrong = sorted(n for n in set(expected) & set(found) if expected[n] != found[n])
        raise FormatError(
            f"{directory / WEIGHTS_FILE}: tensors do not match the manifest (K={k}, C={c}, hidden_mult={mult}): "
            f"missing={missing[:5]}, unexpected={extra[:5]}, wrong shape={wrong[:5]}"
        )
    adapter.load_state_dict(tensors, strict=True)
    if materialised is not None:
        with torch.no_grad():
            w = adapter.W
        if materialised.shape != w.shape or not torch.allclose(materialised, w, atol=1e-5, rtol=0):
            raise FormatError(f"{directory / WEIGHTS_FILE}: the stored W does not match its parametrisation")
    return adapter, manifest


__all__ = [
    "TransMiterAdapter",
    "load_adapter",
    "random_orthogonal",
    "save_adapter",
]

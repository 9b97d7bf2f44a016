"""A downstream model (backbone + plug-in + head) as one ONNX file.

``export_onnx`` loads a model written by ``vimw aggregate`` and traces it with
``torch.onnx.export``:

- a LoRA plug-in (one module or a gated zoo) is first folded into the backbone's weights
  (``vimw.aggregation.fold``): the graph is the plain backbone plus the head, at the
  backbone's cost;
- any other plug-in (convpass, adapter; ``ens``, ``topk``, ``merge``, ``single``) is
  exported as the gated graph it is: the gates are constants of the trained model, so
  ``topk`` keeps only the chosen modules.

The graph takes ``images``: float RGB in ``[0, 1]``, ``N x 3 x S x S`` at the model's
input side ``S`` (any batch size); the normalisation (mean, std) is inside the graph.
Resizing to ``S`` is left to the caller (vimw resizes bilinearly with antialiasing). It
returns ``logits`` (``N x classes``, or ``N x classes x S x S`` for dense tasks). The
file's ``metadata_props`` hold a JSON manifest under ``vimw_export`` (input side,
normalisation, class names, source model, what was folded); a copy is written next to it
as ``FILE.json``. After writing, the file is run once with onnxruntime on the example
batch and its logits compared with vimw's (``max_abs_diff`` in the manifest).

``exporter="auto"`` uses the TorchScript tracer, falling back to the dynamo exporter
(``torch.export``); either can be asked for. They need the ``onnx`` extra (onnx,
onnxscript, onnxruntime), imported only here.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from vimw._extras import require
from vimw.errors import VimwError

ONNX_EXPORT_FORMAT = 1
METADATA_KEY = "vimw_export"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
EXPORTERS = ("auto", "dynamo", "torchscript")


def _onnx() -> ModuleType:
    return require("onnx", "onnx", "ONNX export")


def _onnxruntime() -> ModuleType:
    return require("onnxruntime", "onnx", "Running ONNX models")


class Deployable(nn.Module):
    """``images`` in ``[0, 1]`` -> normalise -> the model: what the ONNX graph computes."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def deployable_model(model: Any, *, fold: bool = True) -> tuple[nn.Module, str]:
    """The model to export and what it is: ``folded_lora``, ``gated`` or ``backbone_head``."""
    if model.plugin is None:
        return model.eval(), "backbone_head"
    if fold:
        from vimw.aggregation.fold import fold_lora, lora_deltas

        try:
            lora_deltas(model.plugin)  # refuses non-LoRA plug-ins
        except VimwError:
            pass
        else:
            return fold_lora(model).eval(), "folded_lora"
    _freeze_gates(model.plugin)
    return model.eval(), "gated"


def _freeze_gates(plugin: nn.Module) -> None:
    """Make a zoo aggregate's gates a constant of the graph.

    In inference the gates depend on nothing but the trained logits, so they are computed
    once here; the exporters then see a constant instead of the ``topk`` selection (whose
    scatter the TorchScript tracer cannot record). The rest of the plug-in runs unchanged.
    """
    gates = getattr(plugin, "gates", None)
    if not callable(gates):
        return
    with torch.no_grad():
        fixed = gates().detach().clone()
    plugin.__dict__["gates"] = lambda: fixed  # shadows the method on this (freshly loaded) instance
    plugin.__dict__.pop("_gates_cache", None)


def _export_dynamo(module: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    require("onnxscript", "onnx", "ONNX export with torch.export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.onnx.export(
            module, (example,), None, dynamo=True, external_data=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), verbose=False,
        )
    return program.model_proto.SerializeToString()


def _export_torchscript(module: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's deprecation notice and constant-folding notes
        torch.onnx.export(
            module, (example,), buffer, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return buffer.getvalue()


def _export_bytes(module: nn.Module, example: torch.Tensor, exporter: str, opset: int) -> tuple[bytes, str]:
    """Serialised ONNX of ``module`` on ``example`` (batch dimension dynamic), and the exporter used.

    ``auto`` tries the TorchScript tracer first: with torch 2.13 on CPU it exports every
    vimw plug-in (gated graphs included) in well under a second on small models, where
    ``torch.export`` refuses the gated graphs (the aggregation's data-dependent choice of
    non-zero gates) and takes seconds even on tiny folded ones. ``dynamo`` is the fallback.
    """
    _onnx()
    order = {"auto": ("torchscript", "dynamo"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}[exporter]
    errors = []
    for name in order:
        try:
            if name == "dynamo":
                return _export_dynamo(module, example, opset), name
            return _export_torchscript(module, example, opset), name
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}")
    raise VimwError("ONNX export failed: " + "; ".join(errors))


def export_module_onnx(
    module: nn.Module,
    out: str | os.PathLike,
    example: torch.Tensor,
    payload: dict,
    *,
    exporter: str = "auto",
    opset: int = DEFAULT_OPSET,
) -> dict:
    """Export ``module`` (taking ``images``), store ``payload`` in the file, check it with onnxruntime."""
    onnx = _onnx()
    if exporter not in EXPORTERS:
        raise VimwError(f"unknown ONNX exporter {exporter!r}; choose from {EXPORTERS}")
    module = module.eval()
    with torch.no_grad():
        data, used = _export_bytes(module, example, exporter, opset)
        expected = module(example)
    proto = onnx.load_from_string(data)
    payload = {**payload, "exporter": used, "opset": opset, "torch": torch.__version__}
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(payload)
    data = proto.SerializeToString()
    got = run_onnx(data, example.numpy())
    payload["max_abs_diff"] = float((torch.from_numpy(got) - expected).abs().max())
    from vimw.io import write_json
    from vimw.io.atomic import atomic_write_bytes
    from vimw.io.names import EXPORT_MANIFEST_SUFFIX

    atomic_write_bytes(out, data)
    write_json(Path(str(out) + EXPORT_MANIFEST_SUFFIX), payload)
    return payload


def run_onnx(model: str | os.PathLike | bytes, images, *, threads: int = 1):
    """Logits of ``images`` (a float32 numpy array ``N x 3 x S x S`` in [0, 1]) with onnxruntime."""
    import numpy as np

    session = _session(model, threads)
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]


def _session(model: str | os.PathLike | bytes, threads: int):
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def read_onnx_manifest(path: str | os.PathLike) -> dict:
    """The vimw manifest stored in an exported ONNX file."""
    from vimw.errors import FormatError

    onnx = _onnx()
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError as exc:
        raise FormatError(f"{path}: exported ONNX file is missing") from exc
    except Exception as exc:
        raise FormatError(f"{path}: not a valid ONNX file ({exc})") from exc
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise FormatError(f"{path}: not a vimw exported model (no {METADATA_KEY!r} metadata)")


def _example(model: Any, batch: int, seed: int = 0) -> torch.Tensor:
    size = int(model.backbone.preprocess.size)
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def export_onnx(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    zoo_dir: str | os.PathLike | None = None,
    fold: bool = True,
    exporter: str = "auto",
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> dict:
    """Write a saved downstream model as one ONNX file; returns its manifest (also in ``OUT.json``).

    An existing ``out`` is replaced only with ``overwrite``.
    """
    from vimw.aggregation.fold import check_export_target
    from vimw.aggregation.store import load_downstream, source_record

    if exporter not in EXPORTERS:
        raise VimwError(f"unknown ONNX exporter {exporter!r}; choose from {EXPORTERS}")
    check_export_target(out, overwrite=overwrite)
    model_dir = Path(model_dir)
    model, manifest = load_downstream(model_dir, zoo_dir=zoo_dir)
    module, kind = deployable_model(model, fold=fold)
    pre = model.backbone.preprocess
    payload = {
        "format": ONNX_EXPORT_FORMAT,
        "kind": kind,
        "arch": model.backbone.arch,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, pre.size, pre.size], "range": [0.0, 1.0],
                  "channels": "RGB", "resize": "bilinear with antialiasing to size x size"},
        "output": {"name": OUTPUT_NAME, "task": model.head_config.kind},
        "preprocess": {"size": pre.size, "mean": list(pre.mean), "std": list(pre.std)},
        "head": model.head_config.to_dict(),
        "class_names": manifest.get("class_names"),
        "task": manifest.get("task"),
        "source_model": source_record(model_dir, manifest),
    }
    wrapped = Deployable(module, pre.mean, pre.std)
    return export_module_onnx(wrapped, out, _example(model, 2), payload, exporter=exporter, opset=opset)


# -- latency --------------------------------------------------------------------------------
def _time_session(session, images, repeats: int, warmup: int) -> list[float]:
    feeds = {INPUT_NAME: images}
    for _ in range(warmup):
        session.run([OUTPUT_NAME], feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run([OUTPUT_NAME], feeds)
        times.append(time.perf_counter() - start)
    return times


def onnx_latency(
    model_dir: str | os.PathLike,
    *,
    onnx_path: str | os.PathLike | None = None,
    zoo_dir: str | os.PathLike | None = None,
    batch: int = 8,
    repeats: int = 20,
    warmup: int = 3,
    threads: int = 1,
    rounds: int = 3,
) -> dict:
    """Latency of a downstream model's ONNX graph against the plain backbone's, both in onnxruntime.

    The downstream graph is ``onnx_path`` (exported with ``export_onnx`` when ``None``);
    the baseline is the same backbone with no plug-in and no head, normalisation
    included, exported the same way. Both run on one random batch of ``batch`` images
    at the model's input side, interleaved over ``rounds`` rounds of ``repeats`` timed
    runs each (after ``warmup`` runs). Returns medians in milliseconds per batch and
    ``ratio`` = exported / backbone (1.0 means no cost over the backbone).
    """
    import numpy as np

    from vimw.aggregation.store import load_downstream

    model, _ = load_downstream(model_dir, zoo_dir=zoo_dir)
    pre = model.backbone.preprocess
    with tempfile.TemporaryDirectory(prefix="vimw-onnx-") as tmp:
        if onnx_path is None:
            onnx_path = Path(tmp) / "model.onnx"
            payload = export_onnx(model_dir, onnx_path, zoo_dir=zoo_dir)
        else:
            payload = read_onnx_manifest(onnx_path)
        plain = Deployable(model.backbone.eval(), pre.mean, pre.std)
        baseline_path = Path(tmp) / "backbone.onnx"
        export_module_onnx(plain, baseline_path, _example(model, 2), {"kind": "plain_backbone"})
        images = _example(model, batch, seed=1).numpy().astype(np.float32)
        sessions = {"exported": _session(onnx_path, threads), "backbone": _session(baseline_path, threads)}
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(rounds):
            for name, session in sessions.items():
                times[name].extend(_time_session(session, images, repeats, warmup))
    median = {name: float(np.median(values)) * 1000.0 for name, values in times.items()}
    return {
        "kind": payload.get("kind"),
        "exporter": payload.get("exporter"),
        "batch": batch,
        "image_size": pre.size,
        "threads": threads,
        "runs": rounds * repeats,
        "exported_ms": median["exported"],
        "backbone_ms": median["backbone"],
        "ratio": median["exported"] / median["backbone"],
    }


__all__ = ["Deployable", "deployable_model", "export_module_onnx", "export_onnx", "onnx_latency", "read_onnx_manifest",
           "run_onnx"]

"""The teacher: a zero-shot model fine-tuned on the base classes, and its file format.

:class:`FineTunedZeroShot` adapts a zero-shot head's *image features* with a plug-in (a new
convpass module, or a ViM aggregation over a zoo) while the text-derived classifier rows of
all the task's classes stay frozen buffers; only the plug-in trains. It scores every class,
base and novel, from one logit vector.

:func:`finetune_teacher` trains it with cross-entropy over the base columns plus a
*consistency* term toward the frozen zero-shot model's own predictions over all C classes
(``KL(p_zero-shot || p_fine-tuned)``, PromptSRC's self-regularisation idea): base accuracy
rises without the novel classes collapsing. The weight is a fixed setting of the recipe
(``consistency``; 0 turns it off), not chosen on validation data. The epoch is chosen by the
one selection rule on validation images (``"all"`` or ``"base"`` classes).

Files (a directory): ``plugin.safetensors`` (the plug-in's tensors and the calibration mean)
and ``finetuned.json`` (format, version, the zero-shot model's spec, the plug-in's source,
class names, template, training settings and result), written atomically, manifest last.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vimw.errors import DataError, FormatError, VimwError
from vimw.io import load_tensors, read_json, save_tensors, write_json
from vimw.io.names import FINETUNED_MANIFEST_FILE, FINETUNED_WEIGHTS_FILE, TEACHER_FORMAT, TEACHER_FORMAT_VERSION
from vimw.modules.registry import DEFAULT_MODULE_KIND
from vimw.training.config import FitConfig
from vimw.transfer.scoring import json_safe, validation_metrics
from vimw.transfer.vocab import DEFAULT_TEMPLATE
from vimw.transfer.zeroshot import load_zero_shot
from vimw.version import __version__


@dataclass(frozen=True)
class TeacherConfig(FitConfig):
    """How a zero-shot model is fine-tuned on the base classes (the teacher and the strong
    fine-tuned reference use the same recipe; no gradient clipping, as in PromptSRC's)."""

    lr: float = 3e-3
    epochs: int = 10
    batch_size: int = 16
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    grad_clip: float | None = None
    consistency: float = 1.0  # weight of KL(zero-shot || fine-tuned) over all task classes
    progress: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lr > 0 or self.epochs < 1 or self.batch_size < 1:
            raise DataError(f"teacher training needs lr > 0, epochs >= 1 and batch_size >= 1, got "
                            f"lr={self.lr}, epochs={self.epochs}, batch_size={self.batch_size}")
        if self.consistency < 0 or self.weight_decay < 0:
            raise DataError("consistency and weight_decay must be >= 0")


class FineTunedZeroShot(nn.Module):
    """``logits = (backbone(x; bypass=plugin) - mean) @ rows^T + bias`` with frozen text rows.

    Built from an :class:`~vimw.transfer.zeroshot.ImageNetTextHead` (its backbone, inversion,
    calibration mean and the rows it predicts for ``class_names``) and a plug-in exposing
    ``.bypass`` (a :class:`~vimw.modules.ModuleSet` or a :class:`~vimw.aggregation.ZooAggregate`).
    """

    def __init__(self, head: Any, class_names: Sequence[str], plugin: nn.Module, template: str = DEFAULT_TEMPLATE) -> None:
        super().__init__()
        if not hasattr(plugin, "bypass"):
            raise VimwError("the plug-in must expose .bypass (a ModuleSet or a ZooAggregate)")
        if not hasattr(head, "backbone"):
            raise VimwError(f"{getattr(head, 'name', head)!r} cannot be fine-tuned with a plug-in "
                            "(only ImageNet text heads on a vimw backbone can)")
        self.backbone = head.backbone
        self.backbone.freeze()
        self.plugin = plugin
        self.invert = bool(getattr(head, "invert", False))
        self.class_names = [str(n) for n in class_names]
        self.template = template
        self.head_name = head.name
        weights, bias = head.class_weights(self.class_names, template)
        mean = getattr(head, "feature_mean", None)
        self.register_buffer("rows", weights.T.contiguous().float())
        self.register_buffer("bias", bias.float().clone())
        self.register_buffer("feature_mean", torch.zeros(weights.shape[0]) if mean is None else mean.float().clone())

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def train(self, mode: bool = True) -> "FineTunedZeroShot":
        """Only the plug-in changes mode: the frozen backbone stays in eval mode, so its batch
        norms neither use batch statistics nor update their running ones."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor, *, plugin: bool = True) -> torch.Tensor:
        if self.invert:
            images = 255 - images if images.dtype == torch.uint8 else 1.0 - images
        pixels = self.backbone.preprocess(images.to(self.device))
        feats = self.backbone.forward_features(pixels, bypass=self.plugin.bypass if plugin else None)
        return (feats - self.feature_mean) @ self.rows.T + self.bias

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.plugin.parameters() if p.requires_grad]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, *, batch_size: int = 128, plugin: bool = True) -> torch.Tensor:
        """Logits over all C classes (CPU, float32); ``plugin=False``: the zero-shot model's."""
        was = self.training
        self.eval()
        try:
            return torch.cat([self(images[i : i + batch_size], plugin=plugin).float().cpu()
                              for i in range(0, len(images), batch_size)])
        finally:
            self.train(was)


def check_plugin_source(plugin: str | os.PathLike) -> None:
    """Refuse, before any work, a plug-in that is neither a zoo directory nor a module kind."""
    from vimw.modules import config_from_dict

    text = str(plugin)
    if Path(text).is_dir():
        return
    if os.sep in text or "/" in text:
        raise VimwError(f"the zoo directory {text} does not exist: build it (vimw zoo build --zoo {text}) or give "
                        "a module kind (e.g. convpass) for a new plug-in")
    try:
        config_from_dict({"kind": text})
    except (KeyError, ValueError, TypeError) as exc:
        raise VimwError(f"unknown plug-in {text!r}: give a module kind (e.g. convpass) or a zoo directory ({exc})") from exc


def make_plugin(backbone: Any, plugin: str | os.PathLike = DEFAULT_MODULE_KIND, *, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh plug-in: a module kind (default ``DEFAULT_MODULE_KIND``) or a zoo directory (ViM ``ens``)."""
    from vimw.modules import ModuleSet, config_from_dict

    torch.manual_seed(seed)
    text = str(plugin)
    check_plugin_source(text)
    if Path(text).is_dir():
        from vimw.aggregation.aggregate import ZooAggregate
        from vimw.zoo import Zoo

        zoo = Zoo(text)
        names = [n for n, e in zoo.list() if e.get("fingerprint") == backbone.fingerprint()]
        if not names:
            raise VimwError(f"the zoo {text} has no module for {backbone.arch} at this resolution")
        experts = [zoo.load(n, backbone) for n in names]
        return (ZooAggregate(experts, names, backbone, mode="ens"),
                {"plugin": "zoo-ens", "plugin_source": str(Path(text).resolve()), "modules": names})
    try:
        module = ModuleSet.create(config_from_dict({"kind": text}), backbone.sites)
    except (KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, VimwError):
            raise
        raise VimwError(f"unknown plug-in {text!r}: give a module kind (e.g. convpass) or a zoo directory") from exc
    return module, {"plugin": text, "plugin_source": text, "module": module.config.to_dict()}


def finetune_teacher(
    model: FineTunedZeroShot,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    base: Sequence[int],
    novel: Sequence[int],
    protocol: str = "all",
    config: TeacherConfig | None = None,
    extra_protocols: Sequence[str] = (),
) -> tuple[FineTunedZeroShot, dict[str, Any]]:
    """Fine-tune the plug-in on the base classes; keep the epoch the selection rule prefers.

    Cross-entropy over the base columns, plus ``consistency`` x KL from the frozen zero-shot
    model's softmax over all C classes to the model's (PromptSRC-style self-regularisation).
    Validation after every epoch, the starting state (epoch 0) included, by
    :func:`~vimw.transfer.scoring.validation_metrics` under ``protocol``. For each protocol in
    ``extra_protocols`` the state the rule would keep under it is returned too (one run serves
    several protocols): ``info["states"][protocol]``. ``info["seconds"]`` counts the whole run,
    ``info["validation_seconds"]`` the validation passes in it.
    """
    from vimw.evaluation.selection import is_better
    from vimw.training.engine import RunOutputs, Trainable, run_fit

    cfg = config or TeacherConfig()
    base_t = torch.as_tensor(list(base), dtype=torch.long)
    y = torch.as_tensor(train_labels).long().reshape(-1)
    yv = torch.as_tensor(val_labels).long().reshape(-1)
    if len(y) != len(train_images) or len(yv) != len(val_images) or len(y) == 0:
        raise DataError("teacher training: images and labels differ in number (or no training images)")
    if not torch.isin(y, base_t).all():
        raise DataError("teacher training: every training label must be a base class")
    remap = torch.full((len(model.class_names),), -1, dtype=torch.long)
    remap[base_t] = torch.arange(base_t.numel())
    y_local = remap[y]
    params = model.trainable_parameters()
    if not params:
        raise VimwError("the plug-in has no trainable parameters")
    zs_train = model.predict(train_images, plugin=False) if cfg.consistency > 0 else None
    n = len(train_images)
    steps = -(-n // cfg.batch_size)
    device = model.device

    def batches(epoch: int):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        for i in range(steps):
            yield order[i * cfg.batch_size : (i + 1) * cfg.batch_size]

    def loss(idx: torch.Tensor) -> torch.Tensor:
        logits = model(train_images[idx])
        value = F.cross_entropy(logits[:, base_t.to(device)], y_local[idx].to(device))
        if zs_train is not None:
            target = F.log_softmax(zs_train[idx].to(device), -1)
            value = value + cfg.consistency * F.kl_div(F.log_softmax(logits, -1), target, reduction="batchmean",
                                                       log_target=True)
        return value

    extra: dict[str, tuple[dict[str, float] | None, dict[str, torch.Tensor] | None, int]] = {
        p: (None, None, -1) for p in extra_protocols}
    last: dict[str, Any] = {"validation_seconds": 0.0}

    def validate() -> dict[str, float]:
        started = time.perf_counter()
        val_logits = model.predict(val_images)
        last["validation_seconds"] += time.perf_counter() - started  # the passes, apart from training
        last["epoch_metrics"] = {p: validation_metrics(val_logits, yv, base, novel, p) for p in extra}
        if "started" not in last:  # the starting state (epoch 0) is a candidate for every protocol
            last["started"] = True
            for p, metrics in last["epoch_metrics"].items():
                extra[p] = (metrics, snapshot(), 0)
        return validation_metrics(val_logits, yv, base, novel, protocol)

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.plugin.state_dict().items()}

    def restore(state: dict[str, torch.Tensor]) -> None:
        model.plugin.load_state_dict(state)

    def consider_extra(epoch: int, record: dict) -> None:
        if record.get("in_warmup"):
            return
        for p, metrics in last.get("epoch_metrics", {}).items():
            best, _, _ = extra[p]
            if is_better(metrics, best):
                extra[p] = (metrics, snapshot(), epoch)

    started = time.perf_counter()
    result = run_fit(
        Trainable([{"params": params, "lr": cfg.lr}], snapshot, restore, model.plugin.train), batches, loss,
        config=cfg, steps_per_epoch=steps, validate=validate, include_start=True,
        outputs=RunOutputs(progress=cfg.progress, desc="fine-tune"), on_epoch_end=consider_extra,
    )
    model.eval()
    info: dict[str, Any] = {
        "config": cfg.to_dict(), "protocol": protocol, "best_epoch": result.best_epoch,
        "best_metrics": result.best_metrics, "history": result.history, "seconds": time.perf_counter() - started,
        "validation_seconds": last["validation_seconds"],
        "trainable": sum(p.numel() for p in params),
        "states": {p: {"epoch": e, "metrics": m, "state": s} for p, (m, s, e) in extra.items()},
    }
    return model, info


# -- files ------------------------------------------------------------------------------------------------
def save_teacher(directory: str | os.PathLike, model: FineTunedZeroShot, *, model_spec: str, plugin_source: str,
                 info: dict[str, Any] | None = None) -> Path:
    """Write ``plugin.safetensors`` then ``finetuned.json`` (the manifest last, as the commit mark)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"plugin.{k}": v.detach().cpu().contiguous() for k, v in model.plugin.state_dict().items()}
    tensors["feature_mean"] = model.feature_mean.detach().cpu().contiguous()
    sha = save_tensors(directory / FINETUNED_WEIGHTS_FILE, tensors, metadata={"format": TEACHER_FORMAT})
    info = {k: v for k, v in (info or {}).items() if k not in ("history", "states")}
    write_json(directory / FINETUNED_MANIFEST_FILE, {
        "format": TEACHER_FORMAT, "format_version": TEACHER_FORMAT_VERSION, "vimw_version": __version__,
        "model_spec": model_spec, "head": model.head_name, "plugin_source": plugin_source,
        "class_names": model.class_names, "template": model.template, "training": json_safe(info),
        "weights_file": FINETUNED_WEIGHTS_FILE, "weights_sha256": sha,
    })
    return directory


def is_teacher_dir(directory: str | os.PathLike) -> bool:
    return (Path(directory) / FINETUNED_MANIFEST_FILE).is_file()


def load_teacher(directory: str | os.PathLike, *, device: str = "cpu") -> tuple[FineTunedZeroShot, dict[str, Any]]:
    """Load a teacher written by :func:`save_teacher`; ``FormatError`` on anything inconsistent."""
    directory = Path(directory)
    where = directory / FINETUNED_MANIFEST_FILE
    info = read_json(where)
    if info.get("format") != TEACHER_FORMAT:
        raise FormatError(f"{where}: not a vimw teacher (format={info.get('format')!r})")
    if info.get("format_version") != TEACHER_FORMAT_VERSION:
        raise FormatError(f"{where}: unsupported format_version {info.get('format_version')!r}")
    try:
        spec, source, names, template = info["model_spec"], info["plugin_source"], info["class_names"], info["template"]
    except KeyError as exc:
        raise FormatError(f"{where}: missing field {exc}") from None
    tensors = load_tensors(directory / info.get("weights_file", FINETUNED_WEIGHTS_FILE), info.get("weights_sha256"))
    head = load_zero_shot(spec, device=device)
    if "feature_mean" in tensors and hasattr(head, "set_feature_mean"):
        head.set_feature_mean(tensors["feature_mean"])
    plugin, _ = make_plugin(head.backbone, source)
    state = {k[len("plugin."):]: v for k, v in tensors.items() if k.startswith("plugin.")}
    try:
        plugin.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FormatError(f"{directory / FINETUNED_WEIGHTS_FILE}: the plug-in's tensors do not match ({exc})") from None
    model = FineTunedZeroShot(head, names, plugin, template).to(device)
    model.eval()
    return model, info


__all__ = [
    "FineTunedZeroShot",
    "TeacherConfig",
    "check_plugin_source",
    "finetune_teacher",
    "is_teacher_dir",
    "load_teacher",
    "make_plugin",
    "save_teacher",
]

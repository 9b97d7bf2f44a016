"""Module kinds behind one interface: every registered kind is checked on a real EfficientNet-Lite0."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import ClassVar

import pytest
import torch

from vimw.backbones import Backbone, Site, create_backbone
from vimw.errors import BackboneMismatchError, FormatError, RegistryError
from vimw.modules import (
    DEFAULT_MODULE_KIND,
    ConvpassConfig,
    LoRAConfig,
    ModuleConfig,
    ModuleSet,
    SiteModule,
    config_from_dict,
    get_module_kind,
    list_module_kinds,
    quick_gelu,
    register_module_kind,
)

KINDS = list_module_kinds()
# 200 px gives odd feature-map sides (25, 13) before strided blocks.
SIZES = (64, 224, 200)


@functools.lru_cache(maxsize=None)
def lite0(size: int) -> Backbone:
    return create_backbone("efficientnet_lite0", image_size=size)


def default_config(kind: str, **overrides) -> ModuleConfig:
    return get_module_kind(kind).config_cls(**overrides)


def new_module_set(kind: str, backbone_sites, **overrides) -> ModuleSet:
    return ModuleSet.create(default_config(kind, **overrides), backbone_sites)


def perturb_(module_set: ModuleSet, seed: int = 0) -> None:
    """Move every parameter off its (partly zero) initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module_set.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


def pixels(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def token_site(layout: str = "nlc_cls", channels: int = 12) -> Site:
    return Site("layer00_attn", 0, channels, channels, 1, layout, channels, kind="attn")


# -- the registry -----------------------------------------------------------------------


def test_builtin_kinds_are_registered_and_convpass_is_default():
    assert {"convpass", "lora", "adapter"} <= set(KINDS)
    assert DEFAULT_MODULE_KIND == "convpass"


def test_unknown_kind_raises_registry_error_listing_known_kinds():
    with pytest.raises(RegistryError, match="convpass"):
        get_module_kind("prefix_tuning")


@pytest.mark.parametrize("kind", KINDS)
def test_kind_declares_a_known_tap(kind):
    assert get_module_kind(kind).module_cls.tap in ("input", "inner")


def test_every_kind_folder_is_registered_under_its_name():
    import pkgutil

    import vimw.modules

    folders = {info.name for info in pkgutil.iter_modules(vimw.modules.__path__) if info.ispkg}
    assert {"convpass", "lora", "adapter"} <= folders <= set(KINDS)


def test_builtin_kinds_declare_their_capabilities():
    declared = {k: get_module_kind(k) for k in ("convpass", "lora", "adapter")}
    assert {k: e.foldable for k, e in declared.items()} == {"convpass": False, "lora": True, "adapter": False}
    assert {k: e.peft_type for k, e in declared.items()} == {"convpass": None, "lora": "LORA", "adapter": None}
    assert all(e.mergeable and e.stacked_cls is not None for e in declared.values())
    assert {e.stacked_cls.__module__ for e in declared.values()} == {f"vimw.modules.{k}.stacked" for k in declared}


@pytest.mark.parametrize("tap, with_delta", [("input", True), ("inner", False)])
def test_declaring_foldable_needs_an_inner_tap_and_delta_weight(tap, with_delta):
    @dataclasses.dataclass
    class Config(ModuleConfig):
        kind: ClassVar[str] = "modules-test-linear"

    body = {"tap": tap, **({"delta_weight": lambda self: None} if with_delta else {})}
    with pytest.raises(RegistryError, match="foldable"):
        register_module_kind("modules-test-linear", Config, foldable=True)(type("Linear", (SiteModule,), body))
    assert "modules-test-linear" not in list_module_kinds()


# -- behaviour on the real backbone, for every kind ---------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_new_module_leaves_backbone_output_exactly_unchanged(kind):
    backbone = lite0(64)
    module_set = new_module_set(kind, backbone.sites)  # training mode: dropout on, still a no-op
    x = pixels(64)
    assert module_set.site_names == backbone.site_names()
    assert torch.equal(backbone(x, bypass=module_set.bypass), backbone(x))


@pytest.mark.parametrize("kind", KINDS)
def test_trained_module_changes_output_and_only_module_gets_gradients(kind):
    backbone = lite0(64)
    module_set = new_module_set(kind, backbone.sites)
    perturb_(module_set)
    x = pixels(64)
    out = backbone(x, bypass=module_set.eval().bypass)
    assert not torch.allclose(out, backbone(x))
    out.square().mean().backward()
    for name, param in module_set.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(not p.requires_grad and p.grad is None for p in backbone.parameters())


def block_inputs_and_outputs(backbone: Backbone, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    hidden, pairs = backbone.stem(x), []
    for index in range(backbone.num_blocks):
        out = backbone.run_block(index, hidden, None)
        pairs.append((hidden, out))
        hidden = out
    return pairs


def tapped_tensor(module: SiteModule, block_in: torch.Tensor, block_out: torch.Tensor) -> torch.Tensor:
    """What the backbone feeds the module: the block input, or the projection input."""
    if module.tap == "input":
        return block_in
    batch, _, height, width = block_out.shape
    return torch.randn(batch, module.site.inner_channels, height, width)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_module_output_matches_block_output_shape_at_every_site(kind, size):
    backbone = lite0(size)
    module_set = new_module_set(kind, backbone.sites)
    assert any(s.stride == 2 for s in module_set.sites)
    assert any(s.in_channels != s.out_channels for s in module_set.sites)
    with torch.no_grad():
        pairs = block_inputs_and_outputs(backbone, pixels(size, batch=1))
        for site, (block_in, block_out) in zip(backbone.sites, pairs):
            module = module_set[site.name]
            assert module(tapped_tensor(module, block_in, block_out)).shape == block_out.shape, site


@pytest.mark.parametrize("layout", ["nlc", "nlc_cls"])
@pytest.mark.parametrize("kind", KINDS)
def test_module_keeps_token_shape(kind, layout):
    site = token_site(layout)
    module = new_module_set(kind, [site])[site.name]
    tokens = torch.randn(2, (1 if layout == "nlc_cls" else 0) + 14 * 14, site.in_channels)
    assert module(tokens).shape == tokens.shape


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_keys_are_site_then_parameter(kind):
    module_set = new_module_set(kind, lite0(64).sites)
    keys = list(module_set.state_dict())
    assert keys and all(key.split(".", 1)[0] in module_set.site_names for key in keys)
    assert sum(t.numel() for t in module_set.state_dict().values()) == module_set.num_parameters()


# -- site selection ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_first_block_attaches_only_to_later_sites(kind):
    module_set = new_module_set(kind, lite0(64).sites, first_block=8)
    assert module_set.site_names == [f"block{i:02d}" for i in range(8, 16)]


def test_sites_list_selects_named_sites_in_backbone_order():
    module_set = new_module_set("convpass", lite0(64).sites, sites=["block11", "block03"])
    assert module_set.site_names == ["block03", "block11"]


def test_sites_and_first_block_combine():
    module_set = new_module_set("convpass", lite0(64).sites, sites=["block03", "block11"], first_block=5)
    assert module_set.site_names == ["block11"]


def test_unknown_site_name_is_refused():
    with pytest.raises(BackboneMismatchError, match="block99"):
        new_module_set("convpass", lite0(64).sites, sites=["block99"])


def test_selection_matching_no_site_is_refused():
    with pytest.raises(BackboneMismatchError, match="no site"):
        new_module_set("convpass", lite0(64).sites, first_block=16)


# -- weights ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_load_weights_restores_a_saved_module(kind):
    sites = lite0(64).sites
    trained = new_module_set(kind, sites)
    perturb_(trained)
    fresh = new_module_set(kind, sites)
    fresh.load_weights(trained.state_dict())
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


@pytest.mark.parametrize("kind", KINDS)
def test_load_weights_with_wrong_shape_names_key_and_shapes(kind):
    module_set = new_module_set(kind, lite0(64).sites)
    tensors = dict(module_set.state_dict())
    key = sorted(tensors)[0]
    good_shape = tuple(tensors[key].shape)
    tensors[key] = torch.zeros(good_shape[0] + 1, *good_shape[1:])
    with pytest.raises(FormatError) as info:
        module_set.load_weights(tensors)
    message = str(info.value)
    assert key in message and str(good_shape) in message and str(tuple(tensors[key].shape)) in message


def test_load_weights_with_missing_key_is_refused():
    module_set = new_module_set("convpass", lite0(64).sites)
    tensors = dict(module_set.state_dict())
    tensors.pop("block05.up.weight")
    with pytest.raises(FormatError, match="block05.up.weight"):
        module_set.load_weights(tensors)


# -- configs ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_config_survives_a_json_round_trip(kind):
    config = default_config(kind, sites=["block03", "block04"], first_block=2, dropout=0.25)
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["kind"] == kind and "vimw_version" in saved
    assert config_from_dict(saved) == config


def test_integer_given_for_float_field_is_stored_as_float():
    config = LoRAConfig(rank=2, alpha=3)
    assert isinstance(config.alpha, float) and config.scale == 1.5


def test_unknown_config_key_warns_and_is_dropped():
    saved = {**ConvpassConfig(hidden_dim=4).to_dict(), "option_from_the_future": 1}
    with pytest.warns(UserWarning, match="option_from_the_future"):
        config = config_from_dict(saved)
    assert config == ConvpassConfig(hidden_dim=4)


@pytest.mark.parametrize("data", [{"hidden_dim": 8}, {"kind": 3}, {"kind": "prefix_tuning"}])
def test_config_without_a_known_kind_is_refused(data):
    with pytest.raises(FormatError):
        config_from_dict(data)


@pytest.mark.parametrize(
    "field, value",
    [("hidden_dim", "8"), ("hidden_dim", True), ("hidden_dim", 8.0), ("dropout", "0.1"),
     ("sites", "block00"), ("sites", [0]), ("first_block", 1.5)],
)
def test_wrong_typed_config_value_is_refused(field, value):
    with pytest.raises(FormatError, match=field):
        config_from_dict({"kind": "convpass", field: value})


@pytest.mark.parametrize(
    "make", [lambda: ConvpassConfig(hidden_dim=0), lambda: LoRAConfig(rank=0),
             lambda: ConvpassConfig(dropout=1.0), lambda: ConvpassConfig(sites=[])],
)
def test_out_of_range_config_value_is_refused(make):
    with pytest.raises(FormatError):
        make()


# -- convpass ---------------------------------------------------------------------------


def test_quick_gelu_is_x_times_sigmoid_of_1_702_x():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0])
    expected = x / (1.0 + torch.exp(-1.702 * x))
    torch.testing.assert_close(quick_gelu(x), expected)
    assert quick_gelu(torch.tensor(1.0)).item() == pytest.approx(1.0 / (1.0 + math.exp(-1.702)))


@pytest.mark.parametrize("stride", [1, 2])
def test_convpass_conv_starts_as_identity_at_centre_tap(stride):
    site = Site("block01", 1, 16, 24, stride, "nchw", 96)
    module = new_module_set("convpass", [site])[site.name]
    z = torch.randn(2, module.conv.in_channels, 9, 9)
    assert torch.equal(module.conv(z), z[:, :, ::stride, ::stride])
    assert not module.up.weight.any() and not module.up.bias.any()
    assert not module.down.bias.any() and module.down.weight.any()


def test_convpass_parameter_count_is_under_two_percent_of_lite0():
    backbone = lite0(64)
    module_set = new_module_set("convpass", backbone.sites, hidden_dim=8)
    expected = sum(s.in_channels * 8 + 8 + 9 * 64 + 8 + 8 * s.out_channels + s.out_channels
                   for s in backbone.sites)
    assert module_set.num_parameters() == expected
    assert module_set.num_parameters() < 0.02 * backbone.num_parameters()


def trained_token_convpass(layout: str = "nlc_cls") -> SiteModule:
    site = token_site(layout)
    module_set = new_module_set("convpass", [site], dropout=0.0)
    perturb_(module_set)
    return module_set[site.name].eval()


def test_convpass_cls_output_depends_only_on_cls_input():
    module = trained_token_convpass()
    tokens = torch.randn(2, 1 + 14 * 14, 12)
    moved = tokens.clone()
    moved[:, 1:] += torch.randn_like(moved[:, 1:])
    out, out_moved = module(tokens), module(moved)
    assert torch.equal(out[:, 0], out_moved[:, 0])
    assert not torch.allclose(out[:, 1:], out_moved[:, 1:])


def test_convpass_patches_ignore_the_cls_token():
    module = trained_token_convpass()
    tokens = torch.randn(2, 1 + 14 * 14, 12)
    moved = tokens.clone()
    moved[:, 0] += 1.0
    assert torch.equal(module(tokens)[:, 1:], module(moved)[:, 1:])


@pytest.mark.parametrize("layout", ["nlc", "nlc_cls"])
def test_convpass_patch_tokens_mix_their_3x3_neighbourhood(layout):
    module = trained_token_convpass(layout)
    offset = 1 if layout == "nlc_cls" else 0
    tokens = torch.randn(1, offset + 14 * 14, 12)
    row, col = 6, 9
    moved = tokens.clone()
    moved[:, offset + row * 14 + col] += 1.0
    changed = (module(tokens) != module(moved)).any(dim=-1)[0, offset:].view(14, 14)
    expected = torch.zeros(14, 14, dtype=torch.bool)
    expected[row - 1 : row + 2, col - 1 : col + 2] = True
    assert torch.equal(changed, expected)


def test_convpass_refuses_non_square_token_grid():
    module = trained_token_convpass()
    with pytest.raises(BackboneMismatchError, match="square"):
        module(torch.randn(1, 1 + 15, 12))


# -- lora -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["nchw", "nlc"])
def test_lora_output_equals_multiplying_by_delta_weight(layout):
    site = Site("block09", 9, 112, 112, 1, layout, 672) if layout == "nchw" else token_site("nlc")
    module_set = new_module_set("lora", [site], rank=3, alpha=6.0)
    perturb_(module_set)
    module = module_set[site.name]
    delta = module.delta_weight()
    assert delta.shape == (site.out_channels, site.inner_channels)
    if layout == "nchw":
        z = torch.randn(2, site.inner_channels, 5, 5)
        expected = torch.einsum("oi,bihw->bohw", delta, z)
    else:
        z = torch.randn(2, 7, site.inner_channels)
        expected = z @ delta.T
    torch.testing.assert_close(module(z), expected, atol=1e-5, rtol=1e-5)


def test_lora_starts_with_zero_delta_weight():
    module = new_module_set("lora", lite0(64).sites)["block03"]
    assert not module.delta_weight().any() and module.lora_A.weight.any()

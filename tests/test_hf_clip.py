"""The HF CLIP vision backbone: exact match with HF's forward, sites, bypass taps, loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from helpers.tap_modules import TapLinear, bypass_modules  # noqa: E402
from vimw.backbones import create_backbone  # noqa: E402
from vimw.backbones.hf_clip import (  # noqa: E402
    CLIP_MEAN,
    TINY_CONFIG,
    HFCLIPVisionBackbone,
    create_hf_clip_backbone,
    save_tiny_clip,
)
from vimw.errors import VimwError  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing in these tests may reach the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=0)


@pytest.fixture(scope="module")
def backbone(tiny_dir) -> HFCLIPVisionBackbone:
    return create_backbone("hf:" + str(tiny_dir))


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def bypass_for(model: HFCLIPVisionBackbone, tap: str, zero: bool) -> dict[str, nn.Module]:
    return bypass_modules(model.sites, tap, zero)


# -- equality with HF ---------------------------------------------------------------------
def test_matches_hf_forward(tiny_dir, backbone, pixels) -> None:
    hf = transformers.CLIPVisionModelWithProjection.from_pretrained(str(tiny_dir), local_files_only=True).eval()
    hf_plain = transformers.CLIPVisionModel.from_pretrained(str(tiny_dir), local_files_only=True).eval()
    with torch.no_grad():
        pooled = backbone(pixels)
        embeds = backbone.image_embeds(pooled)
        expected_pooled = hf_plain(pixel_values=pixels).pooler_output
        expected_embeds = hf(pixel_values=pixels).image_embeds
    assert pooled.shape == (3, TINY_CONFIG["hidden_size"])
    assert embeds.shape == (3, TINY_CONFIG["projection_dim"])
    torch.testing.assert_close(pooled, expected_pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embeds, expected_embeds, atol=1e-5, rtol=1e-5)


def test_random_config_matches_hf(pixels) -> None:
    config = transformers.CLIPVisionConfig(**{**TINY_CONFIG, "num_hidden_layers": 3, "hidden_act": "gelu"})
    model = create_hf_clip_backbone("tiny-random", config=config)
    hf = transformers.CLIPVisionModel(config).eval()
    hf.load_state_dict(model.tower.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), hf(pixel_values=pixels).pooler_output, atol=1e-5, rtol=1e-5)
    assert model.arch == "hf:tiny-random"
    assert model.num_blocks == 3


# -- sites and metadata -------------------------------------------------------------------
def test_sites(backbone) -> None:
    hidden, inter = TINY_CONFIG["hidden_size"], TINY_CONFIG["intermediate_size"]
    assert backbone.site_names() == ["layer00_attn", "layer00_mlp", "layer01_attn", "layer01_mlp"]
    assert backbone.num_blocks == 2 and backbone.feature_dim == hidden
    for site in backbone.sites:
        assert (site.in_channels, site.out_channels, site.stride, site.layout) == (hidden, hidden, 1, "nlc_cls")
        assert site.block == int(site.name[5:7])
        assert site.kind == site.name.split("_")[1]
        assert site.inner_channels == (hidden if site.kind == "attn" else inter)


def test_preprocess_and_metadata(backbone) -> None:
    assert backbone.preprocess.size == TINY_CONFIG["image_size"]
    assert backbone.preprocess.mean == pytest.approx(CLIP_MEAN)
    assert backbone.class_names is None and not backbone.has_classifier
    assert backbone.embed_dim == TINY_CONFIG["projection_dim"]
    with pytest.raises(VimwError, match="no classifier head"):
        backbone.classify(torch.zeros(1, TINY_CONFIG["hidden_size"]))
    images = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    assert backbone(backbone.preprocess(images)).shape == (2, TINY_CONFIG["hidden_size"])


def test_other_image_size_interpolates_positions(tiny_dir) -> None:
    model = create_backbone("hf:" + str(tiny_dir), image_size=48)
    assert model.preprocess.size == 48
    pixels = model.preprocess(torch.rand(2, 3, 48, 48))
    assert model.stem(pixels).shape == (2, 1 + 6 * 6, TINY_CONFIG["hidden_size"])
    assert torch.isfinite(model(pixels)).all()


# -- bypass modules -----------------------------------------------------------------------
@pytest.mark.parametrize("tap", ["input", "inner"])
def test_zero_module_is_a_no_op_and_nonzero_changes_output(backbone, pixels, tap) -> None:
    with torch.no_grad():
        plain = backbone(pixels)
        zero = backbone(pixels, bypass_for(backbone, tap, zero=True))
        nonzero = backbone(pixels, bypass_for(backbone, tap, zero=False))
    assert torch.equal(plain, zero)
    assert (plain - nonzero).abs().max() > 1e-3


def test_input_tap_reads_layer_norm_output(backbone, pixels) -> None:
    """``x + Attn(h1) + M(h1)``: the module sees LN1's output and adds to the residual."""
    seen: list[torch.Tensor] = []

    class Probe(nn.Module):
        tap = "input"

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            seen.append(h)
            return torch.ones_like(h)

    with torch.no_grad():
        hidden = backbone.stem(pixels)
        probed = backbone.run_block(0, hidden, {"layer00_attn": Probe()})
        # The same block computed with HF's own sublayers, plus the probe's constant.
        layer = backbone.tower.encoder.layers[0]
        h1 = layer.layer_norm1(hidden)
        x1 = hidden + layer.self_attn(h1)[0] + 1
        expected = x1 + layer.mlp(layer.layer_norm2(x1))
    torch.testing.assert_close(seen[0], h1)
    torch.testing.assert_close(probed, expected, atol=1e-5, rtol=1e-5)


def test_unknown_tap_is_refused(backbone, pixels) -> None:
    module = TapLinear(32, 32, "input", zero=True)
    module.tap = "elsewhere"
    with pytest.raises(VimwError, match="tap"):
        backbone(pixels, {"layer00_mlp": module})


def test_gradients_reach_modules_only(tiny_dir, pixels) -> None:
    model = create_backbone("hf:" + str(tiny_dir))
    assert model.frozen and not any(p.requires_grad for p in model.parameters())
    bypass = bypass_for(model, "input", zero=False)
    model(pixels, bypass).sum().backward()
    assert all(m.proj.weight.grad is not None for m in bypass.values())
    assert all(p.grad is None for p in model.parameters())


# -- loading and identity -------------------------------------------------------------------
def test_fingerprint_stable_and_weight_dependent(tiny_dir, tmp_path) -> None:
    first = create_backbone("hf:" + str(tiny_dir))
    second = create_backbone("hf:" + str(tiny_dir))
    assert first.fingerprint() == second.fingerprint()
    assert first.arch == second.arch == "hf:" + tiny_dir.name

    other = create_backbone("hf:" + str(save_tiny_clip(tmp_path / "other", seed=1)))
    assert other.fingerprint() != first.fingerprint()

    # Same weights in another directory under another name: same fingerprint.
    moved = create_backbone("hf:" + str(save_tiny_clip(tmp_path / "moved", seed=0)))
    assert moved.arch != first.arch and moved.fingerprint() == first.fingerprint()


def test_tower_without_projection(tmp_path, pixels) -> None:
    model = create_backbone("hf:" + str(save_tiny_clip(tmp_path / "plain", with_projection=False)))
    assert not model.has_projection and model.embed_dim is None
    with pytest.raises(VimwError, match="visual projection"):
        model.image_embeds(model(pixels))


def test_full_clip_checkpoint_loads_vision_tower(tmp_path, pixels) -> None:
    config = transformers.CLIPConfig(
        vision_config={k: v for k, v in TINY_CONFIG.items() if k != "projection_dim"},
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4),
        projection_dim=8,
    )
    full = transformers.CLIPModel(config).eval()
    full.save_pretrained(tmp_path / "full")
    model = create_backbone("hf:" + str(tmp_path / "full"))
    assert model.embed_dim == 8
    with torch.no_grad():
        expected = full.get_image_features(pixel_values=pixels)
        expected = getattr(expected, "pooler_output", expected)  # a tensor in older versions
        torch.testing.assert_close(model.image_embeds(model(pixels)), expected, atol=1e-5, rtol=1e-5)


def test_missing_directory_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(VimwError, match="does not exist"):
        create_backbone("hf:" + str(tmp_path / "nowhere"))


def test_directory_without_weights_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(VimwError, match="present locally"):
        create_backbone("hf:" + str(tmp_path / "empty"))


def test_unknown_hub_name_offline_is_a_clear_error(monkeypatch) -> None:
    # Any attempt to open a connection would fail loudly instead of hanging.
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the CLIP loader tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(VimwError, match="vimw-test/no-such-clip.*present locally"):
        create_backbone("hf:vimw-test/no-such-clip")


def test_freeze_stops_all_gradients(tiny_dir) -> None:
    model = create_backbone("hf:" + str(tiny_dir), freeze=False)
    assert all(p.requires_grad for p in model.parameters())
    model.freeze()
    assert model.frozen and not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_save_tiny_clip_does_not_touch_global_rng(tmp_path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    save_tiny_clip(tmp_path / "rng")
    assert torch.equal(torch.rand(3), expected)


def test_missing_transformers_names_the_extra(monkeypatch) -> None:
    import sys

    from vimw.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "transformers", None)  # makes the import fail
    with pytest.raises(MissingExtraError, match=r"vimw\[clip\]"):
        create_hf_clip_backbone("anything", config=object())

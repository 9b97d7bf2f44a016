"""HF vision transformers beyond CLIP (ViT, DINOv2, SigLIP) through one encoder loop.

Each family is a tiny randomly initialised model saved locally (no download): the loop
reproduces HF's own outputs, a zero module is a no-op, there are two sites per block,
LoRA folds into the weights and maps onto PEFT, and the zoo -> aggregate -> evaluate
chain runs from the command line.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from helpers.cli_chain import zoo_aggregate_evaluate  # noqa: E402
from helpers.tap_modules import bypass_modules  # noqa: E402
from vimw.aggregation.fold import fold_into_backbone, lora_deltas  # noqa: E402
from vimw.backbones import create_backbone  # noqa: E402
from vimw.backbones.hf_base import FAMILIES, HFVisionBackbone, preprocess_from  # noqa: E402
from vimw.backbones.hf_vit import save_tiny_hf  # noqa: E402
from vimw.errors import VimwError  # noqa: E402
from vimw.modules import LoRAConfig, ModuleSet  # noqa: E402

FAMILY_NAMES = ("clip", "vit", "dinov2", "siglip")
HF_CLASS = {"clip": "CLIPVisionModel", "vit": "ViTModel", "dinov2": "Dinov2Model", "siglip": "SiglipVisionModel"}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, SimpleNamespace]:
    root = tmp_path_factory.mktemp("hf_families")
    out = {}
    for family in FAMILY_NAMES:
        directory = save_tiny_hf(family, root / f"tiny-{family}", seed=0)
        out[family] = SimpleNamespace(dir=directory, backbone=create_backbone(f"hf:{directory}"))
    return out


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def random_modules(backbone, config, seed: int = 0, scale: float = 0.2) -> ModuleSet:
    module = ModuleSet.create(config, backbone.sites)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():  # non-zero B: the module really changes outputs
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return module.eval()


# -- the contract -----------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_loop_equals_hf_model(tiny, pixels, family) -> None:
    backbone = tiny[family].backbone
    assert isinstance(backbone, HFVisionBackbone) and backbone.family.name == family
    hf = getattr(transformers, HF_CLASS[family]).from_pretrained(str(tiny[family].dir), local_files_only=True).eval()
    with torch.no_grad():
        expected = hf(pixel_values=pixels)
        tokens = backbone.hf_last_hidden_state(pixels)
        pooled = backbone(pixels)
    torch.testing.assert_close(tokens, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
    # ViT's pooler_output is a tanh dense layer on the class token; vimw pools the class token itself.
    want = expected.last_hidden_state[:, 0] if family == "vit" else expected.pooler_output
    torch.testing.assert_close(pooled, want, atol=1e-5, rtol=1e-5)
    assert pooled.shape == (3, backbone.feature_dim)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_two_sites_per_block(tiny, family) -> None:
    backbone = tiny[family].backbone
    assert backbone.num_blocks == 2
    assert backbone.site_names() == ["layer00_attn", "layer00_mlp", "layer01_attn", "layer01_mlp"]
    layout = "nlc" if family == "siglip" else "nlc_cls"  # SigLIP has no class token
    for site in backbone.sites:
        assert (site.in_channels, site.out_channels, site.layout) == (32, 32, layout)
        assert site.inner_channels == (32 if site.kind == "attn" else 64)
        assert backbone.projection(site).in_features == site.inner_channels


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("tap", ["input", "inner"])
def test_zero_module_is_a_no_op(tiny, pixels, family, tap) -> None:
    backbone = tiny[family].backbone

    def bypass(zero: bool) -> dict[str, nn.Module]:
        return bypass_modules(backbone.sites, tap, zero)

    with torch.no_grad():
        plain = backbone(pixels)
        assert torch.equal(backbone(pixels, bypass(zero=True)), plain)
        assert (backbone(pixels, bypass(zero=False)) - plain).abs().max() > 1e-3


def test_input_tap_sits_outside_dinov2_layer_scale(tiny, pixels) -> None:
    """``x + s1 * Attn(h1) + M(h1)``: the module sees LN1's output and is not layer-scaled."""
    backbone = tiny["dinov2"].backbone

    class Ones(nn.Module):
        tap = "input"

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return torch.ones_like(h)

    with torch.no_grad():
        hidden = backbone.stem(pixels)
        layer = backbone.layer(0)
        without = layer(hidden)
        with_module = backbone.run_block(0, hidden, {"layer00_attn": Ones()})
        # HF's own block on (x + 1) after attention: the MLP sees the shifted residual.
        x1 = hidden + layer.layer_scale1(layer.attention(layer.norm1(hidden))[0]) + 1
        expected = x1 + layer.layer_scale2(layer.mlp(layer.norm2(x1)))
    torch.testing.assert_close(backbone.run_block(0, hidden, None), without, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_module, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(layer.layer_scale1.lambda1, torch.ones(32))  # the scale is really there


@pytest.mark.parametrize("family", ["vit", "dinov2", "siglip"])
def test_other_resolution_and_identity(tiny, tmp_path, family) -> None:
    model = create_backbone(f"hf:{tiny[family].dir}", image_size=48)
    assert model.preprocess.size == 48
    assert torch.isfinite(model(model.preprocess(torch.rand(2, 3, 48, 48)))).all()
    # The fingerprint depends on the weights, not on where they are.
    assert model.fingerprint() == tiny[family].backbone.fingerprint()
    moved = create_backbone(f"hf:{save_tiny_hf(family, tmp_path / 'moved', seed=0)}")
    other = create_backbone(f"hf:{save_tiny_hf(family, tmp_path / 'other', seed=1)}")
    assert moved.fingerprint() == model.fingerprint() != other.fingerprint()
    fingerprints = {tiny[f].backbone.fingerprint() for f in FAMILY_NAMES}
    assert len(fingerprints) == len(FAMILY_NAMES)


@pytest.mark.parametrize("variant", ["dinov2-swiglu", "siglip-no-head", "siglip-full-model", "vit-classifier"])
def test_checkpoint_variants_equal_hf(tmp_path, pixels, variant) -> None:
    """SwiGLU MLPs, SigLIP without its pooling head or saved as a whole SiglipModel, a ViT saved with its classifier."""
    from vimw.backbones.hf_vit import TINY_CONFIGS

    if variant == "dinov2-swiglu":
        directory = save_tiny_hf("dinov2", tmp_path / variant, use_swiglu_ffn=True)
        hf = transformers.Dinov2Model.from_pretrained(str(directory)).eval()
        expected = lambda: hf(pixel_values=pixels).pooler_output  # noqa: E731
    elif variant == "siglip-no-head":
        directory = save_tiny_hf("siglip", tmp_path / variant, vision_use_head=False)
        hf = transformers.SiglipVisionModel.from_pretrained(str(directory)).eval()
        expected = lambda: hf(pixel_values=pixels).last_hidden_state.mean(1)  # noqa: E731  (token mean)
    elif variant == "siglip-full-model":
        text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
        hf = transformers.SiglipModel(transformers.SiglipConfig(vision_config=TINY_CONFIGS["siglip"], text_config=text))
        hf.eval().save_pretrained(directory := tmp_path / variant)
        expected = lambda: hf.vision_model(pixel_values=pixels).pooler_output  # noqa: E731
    else:
        hf = transformers.ViTForImageClassification(transformers.ViTConfig(**TINY_CONFIGS["vit"], num_labels=5))
        hf.eval().save_pretrained(directory := tmp_path / variant)
        expected = lambda: hf.vit(pixel_values=pixels).last_hidden_state[:, 0]  # noqa: E731
    backbone = create_backbone(f"hf:{directory}")
    with torch.no_grad():
        torch.testing.assert_close(backbone(pixels), expected(), atol=1e-5, rtol=1e-5)
    if variant == "dinov2-swiglu":  # the MLP's inner width is SwiGLU's hidden size
        assert backbone.sites[1].inner_channels == backbone.projection(backbone.sites[1]).in_features == 48


def test_preprocessing_follows_the_checkpoint() -> None:
    # A DINOv2-style processor: resize the short side to 256, crop 224, ImageNet statistics.
    dinov2 = {"do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "size": {"shortest_edge": 256},
              "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    pre = preprocess_from(dinov2, 518, FAMILIES["dinov2"].mean, FAMILIES["dinov2"].std)
    assert (pre.size, pre.mean) == (224, (0.485, 0.456, 0.406))
    # SigLIP: a plain resize to 384 and 0.5 / 0.5.
    siglip = {"do_resize": True, "size": {"height": 384, "width": 384}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    assert preprocess_from(siglip, 224, (0, 0, 0), (1, 1, 1)).size == 384
    # No processor file: the config's image size and the family's statistics.
    vit = preprocess_from(None, 224, FAMILIES["vit"].mean, FAMILIES["vit"].std)
    assert (vit.size, vit.mean, vit.std) == (224, (0.5,) * 3, (0.5,) * 3)


def test_without_processor_file_uses_family_defaults(tmp_path) -> None:
    directory = save_tiny_hf("dinov2", tmp_path / "bare", write_preprocessor=False)
    model = create_backbone(f"hf:{directory}")
    assert model.preprocess.size == 32 and model.preprocess.mean == FAMILIES["dinov2"].mean


def test_unsupported_model_type_is_a_clear_error(tmp_path) -> None:
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(VimwError, match="'bert' is not a supported vision transformer"):
        create_backbone(f"hf:{tmp_path / 'bert'}")


# -- LoRA: fold and PEFT ----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["vit", "dinov2", "siglip"])
def test_lora_folds_into_the_projections(tiny, pixels, family) -> None:
    backbone = tiny[family].backbone
    lora = random_modules(backbone, LoRAConfig(rank=2, alpha=4.0))
    with torch.no_grad():
        want = backbone(pixels, lora.bypass)
        folded = fold_into_backbone(backbone, lora_deltas(lora))
        got = folded(pixels)
        assert (want - backbone(pixels)).abs().max() > 1e-3
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert folded.fingerprint() != backbone.fingerprint()


@pytest.mark.parametrize("family", ["vit", "dinov2", "siglip"])
def test_peft_export_and_import(tiny, pixels, tmp_path, family) -> None:
    peft = pytest.importorskip("peft")
    from vimw.interop import export_peft_lora, import_peft_lora
    from vimw.zoo import Zoo
    from vimw.zoo.manifest import ModuleManifest

    backbone = tiny[family].backbone
    zoo = Zoo(tmp_path / "zoo")
    lora = random_modules(backbone, LoRAConfig(rank=2, alpha=3.0, sites=["layer00_attn", "layer01_mlp"]))
    zoo.add(ModuleManifest(
        name="lora", module=lora.config.to_dict(),
        backbone={"arch": backbone.arch, "source": backbone.source, "fingerprint": backbone.fingerprint(),
                  "image_size": backbone.preprocess.size},
        task={"name": "random", "dataset": "none"}, weights={}), lora)
    adapter = export_peft_lora(zoo, "lora", backbone, tmp_path / "adapter")
    hf = getattr(transformers, HF_CLASS[family]).from_pretrained(str(tiny[family].dir)).float().eval()
    model = peft.PeftModel.from_pretrained(hf, adapter).eval()
    with torch.no_grad():
        expected = model(pixel_values=pixels).last_hidden_state
        got = backbone.hf_last_hidden_state(pixels, zoo.load("lora", backbone).bypass)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)

    manifest = import_peft_lora(adapter, zoo, "back", backbone)
    assert manifest.kind == "lora"
    original, again = zoo.load("lora", backbone).state_dict(), zoo.load("back", backbone).state_dict()
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)


# -- the chain from the command line ----------------------------------------------------------
@pytest.mark.parametrize("family", ["vit", "dinov2", "siglip"])
def test_zoo_aggregate_evaluate_from_the_command_line(tiny, tmp_path, capsys, family) -> None:
    from vimw.zoo import Zoo

    backbone = f"hf:{tiny[family].dir}"
    chain = zoo_aggregate_evaluate(tmp_path, capsys, backbone, image_size=32, modules=("bands", "dots"))
    zoo = Zoo(chain.zoo_dir)
    assert zoo.verify() == []
    for name in ("bands", "dots"):
        manifest = zoo.manifest(name)
        assert manifest.backbone["arch"] == f"hf:{tiny[family].dir.name}"
        assert manifest.backbone["fingerprint"] == tiny[family].backbone.fingerprint()

"""PEFT interop on a tiny random CLIP (no download): a vimw lora module exported as a PEFT
LoRA adapter gives PEFT the same outputs as vimw; importing it back gives the same tensors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
import transformers  # noqa: E402

from vimw.backbones import create_backbone  # noqa: E402
from vimw.backbones.hf_clip import save_tiny_clip  # noqa: E402
from vimw.cli.main import main  # noqa: E402
from vimw.errors import FormatError, VimwError  # noqa: E402
from vimw.interop import export_peft_lora, import_peft_lora  # noqa: E402
from vimw.interop.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS  # noqa: E402
from vimw.modules import ConvpassConfig, LoRAConfig, ModuleSet  # noqa: E402
from vimw.zoo import Zoo  # noqa: E402
from vimw.zoo.manifest import ModuleManifest  # noqa: E402

PARTIAL_SITES = ["layer00_attn", "layer01_mlp"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny CLIP, its backbone, and a zoo with two random lora modules and a convpass one."""
    root = tmp_path_factory.mktemp("peft")
    clip_dir = save_tiny_clip(root / "tiny-clip", seed=0)
    backbone = create_backbone(f"hf:{clip_dir}")
    zoo = Zoo(root / "zoo")
    generator = torch.Generator().manual_seed(0)
    for name, config in (
        ("lora-all", LoRAConfig(rank=4, alpha=8.0)),
        ("lora-partial", LoRAConfig(rank=2, alpha=3.0, sites=PARTIAL_SITES)),
        ("conv", ConvpassConfig(hidden_dim=4)),
    ):
        module = ModuleSet.create(config, backbone.sites)
        with torch.no_grad():
            for param in module.parameters():  # non-zero B: the adapter really changes outputs
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
        zoo.add(_manifest(name, module, backbone), module)
    pixels = torch.randn(3, 3, 32, 32, generator=generator)
    return SimpleNamespace(root=root, clip_dir=clip_dir, backbone=backbone, zoo=zoo, pixels=pixels)


def _manifest(name: str, module: ModuleSet, backbone) -> ModuleManifest:
    return ModuleManifest(
        name=name, module=module.config.to_dict(),
        backbone={"arch": backbone.arch, "source": backbone.source, "fingerprint": backbone.fingerprint(),
                  "image_size": backbone.preprocess.size},
        task={"name": "random", "dataset": "none"}, weights={},
    )


def _peft_features(clip_dir: Path, adapter_dir: Path | None, pixels: torch.Tensor) -> torch.Tensor:
    model = transformers.CLIPVisionModel.from_pretrained(clip_dir).float().eval()
    if adapter_dir is not None:
        model = peft.PeftModel.from_pretrained(model, adapter_dir).eval()
    with torch.no_grad():
        return model(pixel_values=pixels).pooler_output


@pytest.mark.parametrize("name", ["lora-all", "lora-partial"])
def test_exported_adapter_gives_peft_the_same_outputs(setup, tmp_path, name):
    out = export_peft_lora(setup.zoo, name, setup.backbone, tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    module = setup.zoo.load(name, setup.backbone)
    assert config["peft_type"] == "LORA" and config["r"] == module.config.rank
    assert config["lora_alpha"] == module.config.alpha and config["lora_dropout"] == 0.0
    assert config["bias"] == "none" and config["base_model_name_or_path"] == str(setup.clip_dir.resolve())

    model = peft.PeftModel.from_pretrained(transformers.CLIPVisionModel.from_pretrained(setup.clip_dir), out)
    lora_layers = sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A") and isinstance(m.lora_A, torch.nn.ModuleDict))
    assert len(lora_layers) == len(module.sites)  # only the covered projections got LoRA
    assert all(n.endswith(("self_attn.out_proj", "mlp.fc2")) for n in lora_layers)

    with torch.no_grad():
        ours = setup.backbone.forward_features(setup.pixels, bypass=module.bypass)
        plain = setup.backbone.forward_features(setup.pixels)
    theirs = _peft_features(setup.clip_dir, out, setup.pixels)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert (ours - plain).abs().max() > 1e-3  # the module does change the features
    torch.testing.assert_close(_peft_features(setup.clip_dir, None, setup.pixels), plain, atol=1e-5, rtol=0)


def test_round_trip_import_gives_identical_tensors_and_outputs(setup, tmp_path):
    out = export_peft_lora(setup.zoo, "lora-partial", setup.backbone, tmp_path / "adapter")
    zoo = Zoo(tmp_path / "zoo2")
    manifest = import_peft_lora(out, zoo, "back", setup.backbone)
    assert zoo.verify() == []
    assert manifest.task["name"] == "peft-import" and manifest.task["dataset"] == "adapter"
    assert manifest.backbone["fingerprint"] == setup.backbone.fingerprint() and manifest.metrics == {}

    original = setup.zoo.load("lora-partial", setup.backbone)
    imported = zoo.load("back", setup.backbone)
    assert imported.config.sites == PARTIAL_SITES
    assert (imported.config.rank, imported.config.alpha) == (original.config.rank, original.config.alpha)
    ours, theirs = original.state_dict(), imported.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.no_grad():
        assert torch.equal(setup.backbone.forward_features(setup.pixels, bypass=original.bypass),
                           setup.backbone.forward_features(setup.pixels, bypass=imported.bypass))


def test_cli_export_and_import(setup, tmp_path, capsys):
    out, zoo2 = tmp_path / "adapter", tmp_path / "zoo2"
    assert main(["zoo", "export-peft", "lora-all", "--zoo", str(setup.zoo.root), "--out", str(out)]) == 0
    assert (out / ADAPTER_WEIGHTS).is_file()
    # the backbone comes from the adapter's base_model_name_or_path
    assert main(["zoo", "import-peft", str(out), "--zoo", str(zoo2), "--name", "again"]) == 0
    assert "again" in capsys.readouterr().out
    original = setup.zoo.load("lora-all", setup.backbone).state_dict()
    again = Zoo(zoo2).load("again", setup.backbone).state_dict()
    assert all(torch.equal(original[k], again[k]) for k in original)


def test_refuses_non_lora_modules_and_non_clip_backbones(setup, tmp_path):
    with pytest.raises(VimwError, match="convpass"):
        export_peft_lora(setup.zoo, "conv", setup.backbone, tmp_path / "a")
    not_clip = SimpleNamespace(arch="efficientnet_lite0")
    with pytest.raises(VimwError, match="HF CLIP backbone"):
        export_peft_lora(setup.zoo, "lora-all", not_clip, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_refuses_pickled_adapter_weights(setup, tmp_path):
    out = export_peft_lora(setup.zoo, "lora-all", setup.backbone, tmp_path / "adapter")
    from safetensors.torch import load_file

    torch.save(load_file(out / ADAPTER_WEIGHTS), out / "adapter_model.bin")
    (out / ADAPTER_WEIGHTS).unlink()
    zoo = Zoo(tmp_path / "zoo2")
    with pytest.raises(FormatError, match="pickle"):
        import_peft_lora(out, zoo, "bad", setup.backbone)
    assert zoo.names() == []


def test_refuses_adapters_vimw_cannot_represent(setup, tmp_path):
    model = transformers.CLIPVisionModel.from_pretrained(setup.clip_dir)
    qv = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "out_proj"]))
    qv.save_pretrained(tmp_path / "qv")
    with pytest.raises(VimwError, match="q_proj"):
        import_peft_lora(tmp_path / "qv", Zoo(tmp_path / "z"), "qv", setup.backbone)

    out = export_peft_lora(setup.zoo, "lora-all", setup.backbone, tmp_path / "dora")
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    (out / ADAPTER_CONFIG).write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(VimwError, match="use_dora"):
        import_peft_lora(out, Zoo(tmp_path / "z"), "dora", setup.backbone)
    with pytest.raises(VimwError, match="already holds"):
        export_peft_lora(setup.zoo, "lora-all", setup.backbone, out)


def test_refuses_adapter_types_no_module_kind_maps(setup, tmp_path):
    out = export_peft_lora(setup.zoo, "lora-all", setup.backbone, tmp_path / "loha")
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    (out / ADAPTER_CONFIG).write_text(json.dumps({**config, "peft_type": "LOHA"}))
    zoo = Zoo(tmp_path / "z")
    with pytest.raises(VimwError, match=r"LOHA adapter; vimw imports only these PEFT types: lora \(LORA\)"):
        import_peft_lora(out, zoo, "loha", setup.backbone)
    assert zoo.names() == []


def test_rslora_adapter_imports_with_the_same_scale(setup, tmp_path):
    out = export_peft_lora(setup.zoo, "lora-all", setup.backbone, tmp_path / "rs")
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    (out / ADAPTER_CONFIG).write_text(json.dumps({**config, "use_rslora": True}))
    zoo = Zoo(tmp_path / "z")
    import_peft_lora(out, zoo, "rs", setup.backbone)
    module = zoo.load("rs", setup.backbone)
    assert module.config.scale == pytest.approx(config["lora_alpha"] / config["r"] ** 0.5)
    with torch.no_grad():
        theirs = _peft_features(setup.clip_dir, out, setup.pixels)
        ours = setup.backbone.forward_features(setup.pixels, bypass=module.bypass)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_missing_peft_names_the_extra(setup, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(VimwError, match=r"vimw\[peft\]"):
        export_peft_lora(setup.zoo, "lora-all", setup.backbone, tmp_path / "x")
    assert not (tmp_path / "x").exists()

"""``vimw export --format onnx``: the ONNX graph gives vimw's logits in onnxruntime on real photos.

Downstream models are built directly (random zoo modules, random gates and head) so that
the plug-in really changes the output; the photos are scikit-image's bundled chelsea and
coffee pictures.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from vimw.aggregation import ZooAggregate, save_downstream  # noqa: E402
from vimw.backbones import Preprocess, create_backbone  # noqa: E402
from vimw.cli.main import main  # noqa: E402
from vimw.data import read_image  # noqa: E402
from vimw.data.photos import photo_path  # noqa: E402
from vimw.deploy.onnx import export_onnx, onnx_latency, read_onnx_manifest, run_onnx  # noqa: E402
from vimw.errors import VimwError  # noqa: E402
from vimw.modules import ConvpassConfig, LoRAConfig, ModuleSet  # noqa: E402
from vimw.training import TaskModel  # noqa: E402
from vimw.training.heads import head_config_for  # noqa: E402
from vimw.zoo import Zoo  # noqa: E402
from vimw.zoo.manifest import ModuleManifest  # noqa: E402

CLASSES = ["x", "y", "z"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """chelsea and coffee as uint8 ``2 x 3 x 96 x 96``."""
    return torch.stack([read_image(photo_path("skimage", f"{name}.png"), 96) for name in ("chelsea", "coffee")])


def downstream(root, backbone, config, mode: str = "ens"):
    """A saved downstream model: two random zoo modules, random gates and head."""
    generator = torch.Generator().manual_seed(0)
    zoo = Zoo(root / "zoo")
    names = ["a", "b"]
    for name in names:
        module = ModuleSet.create(config, backbone.sites)
        with torch.no_grad():
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
        zoo.add(ModuleManifest(
            name=name, module=module.config.to_dict(),
            backbone={"arch": backbone.arch, "source": getattr(backbone, "source", backbone.arch),
                      "fingerprint": backbone.fingerprint(), "image_size": backbone.preprocess.size},
            task={"name": "random"}, weights={}), module)
    plugin = ZooAggregate([zoo.load(n, backbone) for n in names], names, backbone, mode=mode)
    model = TaskModel(backbone, head_config_for(backbone, "classification", len(CLASSES)), plugin=plugin).eval()
    with torch.no_grad():
        plugin.gate_logits.copy_(torch.randn(plugin.gate_logits.shape, generator=generator))
        for param in model.head.parameters():
            # A trained head's scale: logits of a few units (float32 rounding grows with them).
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    index = zoo.read_index()
    save_downstream(root / "model", model, {
        "method": mode,
        "zoo": {"path": str(zoo.root), "modules": [{"name": n, "sha256": index[n]["sha256"]} for n in names]},
        "aggregation": {"mode": mode, "top_k": 2, "single_index": None},
        "class_names": CLASSES,
    })
    return model, root / "model"


def compare(model, onnx_file, photos) -> float:
    """Max |onnxruntime - vimw| over the photos; the graph takes resized [0, 1] images."""
    pre = model.backbone.preprocess
    resized = Preprocess(pre.size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(photos)  # resize only
    with torch.no_grad():
        want = model(pre(photos))
    got = torch.from_numpy(run_onnx(onnx_file, resized.numpy()))
    assert got.shape == want.shape == (len(photos), len(CLASSES))
    assert (want - want.mean(0)).abs().max() > 1e-3  # the photos get different logits
    return float((got - want).abs().max())


def test_gated_convpass_model_from_the_command_line(tmp_path, photos, capsys) -> None:
    from vimw.backbones.hf_vit import save_tiny_hf

    backbone = create_backbone(f"hf:{save_tiny_hf('vit', tmp_path / 'vit')}")
    # topk: the gates' top-k selection becomes a constant of the graph.
    model, model_dir = downstream(tmp_path, backbone, ConvpassConfig(hidden_dim=4), mode="topk")
    out = tmp_path / "deploy" / "model.onnx"
    code = main(["export", "--model", str(model_dir), "--format", "onnx", "--out", str(out), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and out.is_file()
    assert payload["kind"] == "gated" and payload["class_names"] == CLASSES
    assert payload["preprocess"]["size"] == 32 and payload["max_abs_diff"] < 1e-4
    assert read_onnx_manifest(out)["source_model"] == payload["source_model"]
    assert json.loads((tmp_path / "deploy" / "model.onnx.json").read_text())["kind"] == "gated"
    assert compare(model, out, photos) < 1e-4
    # The plug-in is in the graph: a graph of the bare backbone + head gives other logits.
    plain = TaskModel(backbone, model.head_config).eval()
    plain.head.load_state_dict(model.head.state_dict())
    with torch.no_grad():
        pre = backbone.preprocess
        assert (plain(pre(photos)) - model(pre(photos))).abs().max() > 1e-3
    # Any batch size.
    resized = Preprocess(32, (0.0,) * 3, (1.0,) * 3)(photos[:1]).numpy()
    assert run_onnx(out, resized).shape == (1, len(CLASSES))


def test_lora_model_is_folded_default_backbone(tmp_path, photos, lite0) -> None:
    model, model_dir = downstream(tmp_path, lite0, LoRAConfig(rank=2, first_block=10))
    payload = export_onnx(model_dir, tmp_path / "lite0.onnx")
    assert payload["kind"] == "folded_lora" and payload["exporter"] == "torchscript"
    assert compare(model, tmp_path / "lite0.onnx", photos) < 1e-4


def test_dynamo_exporter_on_a_folded_siglip(tmp_path, photos) -> None:
    from vimw.backbones.hf_vit import save_tiny_hf

    backbone = create_backbone(f"hf:{save_tiny_hf('siglip', tmp_path / 'siglip')}")
    model, model_dir = downstream(tmp_path, backbone, LoRAConfig(rank=2), mode="topk")
    payload = export_onnx(model_dir, tmp_path / "siglip.onnx", exporter="dynamo")
    assert payload["kind"] == "folded_lora" and payload["exporter"] == "dynamo"
    assert compare(model, tmp_path / "siglip.onnx", photos) < 1e-4


def test_latency_helper_reports_both_graphs(tmp_path) -> None:
    from vimw.backbones.hf_vit import save_tiny_hf

    backbone = create_backbone(f"hf:{save_tiny_hf('dinov2', tmp_path / 'dinov2')}")
    _, model_dir = downstream(tmp_path, backbone, ConvpassConfig(hidden_dim=4))
    result = onnx_latency(model_dir, batch=2, repeats=2, warmup=1, rounds=1)
    assert result["kind"] == "gated" and result["runs"] == 2 and result["image_size"] == 32
    assert result["exported_ms"] > 0 and result["backbone_ms"] > 0
    assert result["ratio"] == pytest.approx(result["exported_ms"] / result["backbone_ms"])


def test_bad_requests_are_refused(tmp_path, capsys) -> None:
    with pytest.raises(VimwError, match="exporter"):
        export_onnx(tmp_path, tmp_path / "x.onnx", exporter="magic")
    code = main(["export", "--model", str(tmp_path / "nowhere"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")])
    assert code == 2 and "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(VimwError, match="not a vimw exported model|not a valid ONNX"):
        read_onnx_manifest(tmp_path / "junk.onnx")

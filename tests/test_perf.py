"""Issue 6: batched aggregation, top-k skipping, LoRA folding + export, prefix cache."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vimw.aggregation import ZooAggregate, save_downstream
from vimw.aggregation.fold import export_folded, fold_lora, load_exported
from vimw.backbones import create_backbone
from vimw.errors import VimwError
from vimw.modules import AdapterConfig, ConvpassConfig, LoRAConfig, ModuleSet
from vimw.training import HeadConfig, TaskModel, TrainConfig, fit, head_config_for, predict_logits


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0", image_size=64)


@pytest.fixture(scope="module")
def pixels(lite0):
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return lite0.preprocess(images)


def hidden(backbone, x, bypass):
    """The last block's output: pooled ReLU6 features can be all zero on noise images."""
    return backbone.forward_blocks(backbone.stem(x), bypass)


def random_modules(backbone, config, n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        module = ModuleSet.create(config, backbone.sites)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
        out.append(module)
    return out


def aggregate(experts, backbone, mode, batched, seed=1, **kwargs):
    agg = ZooAggregate(experts, [f"m{i}" for i in range(len(experts))], backbone, mode=mode, batched=batched, **kwargs)
    with torch.no_grad():
        agg.gate_logits.copy_(torch.randn(agg.gate_logits.shape, generator=torch.Generator().manual_seed(seed)))
    return agg


def close(a, b, tol=1e-5):
    return torch.allclose(a, b, rtol=tol, atol=tol)


def close_scaled(a, b, tol=1e-5):
    """Max abs difference within ``tol`` of the tensor's scale (hidden states reach ~50)."""
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


# -- batched == looped --------------------------------------------------------------------
@pytest.mark.parametrize("config", [ConvpassConfig(), LoRAConfig(), AdapterConfig(first_block=4)], ids=lambda c: c.kind)
@pytest.mark.parametrize("mode", ["ens", "topk", "merge", "uniform"])
def test_batched_matches_loop_outputs_and_gate_grads(lite0, pixels, config, mode) -> None:
    experts = random_modules(lite0, config, 4)
    results = []
    for batched in (False, True):
        agg = aggregate(experts, lite0, mode, batched, top_k=2)
        assert all(agg.is_batched(s) == batched for s in agg.site_names)
        out = hidden(lite0, pixels, agg.bypass)
        grad = None
        if agg.gate_logits.requires_grad:
            out.square().mean().backward()
            grad = agg.gate_logits.grad.clone()
        results.append((out.detach(), grad))
    (loop_out, loop_grad), (batch_out, batch_grad) = results
    assert close_scaled(loop_out, batch_out)
    if loop_grad is not None:
        assert loop_grad.abs().sum() > 0
        assert close(loop_grad, batch_grad, 1e-4)


def test_batched_on_tokens_matches_loop(tmp_path, monkeypatch) -> None:
    pytest.importorskip("transformers")
    from vimw.backbones.hf_clip import save_tiny_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = create_backbone("hf:" + str(save_tiny_clip(tmp_path / "clip")))
    x = torch.randn(2, 3, 32, 32)
    experts = random_modules(clip, ConvpassConfig(), 3)
    loop = clip(x, aggregate(experts, clip, "ens", False).bypass)
    batch = clip(x, aggregate(experts, clip, "ens", True).bypass)
    assert close(loop, batch)


def test_mixed_zoo_falls_back_to_loop(lite0, pixels) -> None:
    experts = random_modules(lite0, ConvpassConfig(hidden_dim=8), 1) + random_modules(lite0, ConvpassConfig(hidden_dim=4), 1)
    agg = aggregate(experts, lite0, "ens", True)
    assert not any(agg.is_batched(s) for s in agg.site_names)
    want = hidden(lite0, pixels, aggregate(experts, lite0, "ens", False).bypass)
    assert close_scaled(hidden(lite0, pixels, agg.bypass), want)


# -- top-k runs only k modules --------------------------------------------------------------
def test_topk_loop_calls_only_k_modules(lite0, pixels) -> None:
    experts = random_modules(lite0, ConvpassConfig(), 6)
    calls = []
    for index, expert in enumerate(experts):
        for module in expert.values():
            module.register_forward_hook(lambda *_, i=index: calls.append(i))
    agg = aggregate(experts, lite0, "topk", False, top_k=2)
    lite0(pixels, agg.bypass)
    assert len(calls) == 2 * len(agg.site_names)


def test_topk_batched_costs_k_modules(lite0, pixels) -> None:
    experts = random_modules(lite0, ConvpassConfig(), 8)

    def flops(agg):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            lite0(pixels, agg.bypass)
        return counter.get_total_flops()

    plain = flops(aggregate(experts[:1], lite0, "ens", True)) - 0
    topk = flops(aggregate(experts, lite0, "topk", True, top_k=2))
    ens2 = flops(aggregate(experts[:2], lite0, "ens", True))
    ens8 = flops(aggregate(experts, lite0, "ens", True))
    assert topk == ens2 < ens8
    assert plain < topk


# -- folding LoRA ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["ens", "topk", "merge"])
def test_folded_lora_equals_unfolded_lite0(lite0, pixels, mode) -> None:
    experts = random_modules(lite0, LoRAConfig(rank=4, first_block=3), 3)
    head = head_config_for(lite0, "classification", 5)
    model = TaskModel(lite0, head, plugin=aggregate(experts, lite0, mode, True)).eval()
    folded = fold_lora(model)
    assert folded.plugin is None
    with torch.no_grad():
        want, got = model(pixels), folded(pixels)
        plain = TaskModel(lite0, head).eval()
        plain.head.load_state_dict(model.head.state_dict())
        assert not close(plain(pixels), want)  # the zoo does change the output
    assert close(got, want)
    assert close_scaled(hidden(folded.backbone, pixels, None), hidden(lite0, pixels, model.plugin.bypass))


def test_folded_lora_equals_unfolded_clip(tmp_path, monkeypatch) -> None:
    pytest.importorskip("transformers")
    from vimw.backbones.hf_clip import save_tiny_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = create_backbone("hf:" + str(save_tiny_clip(tmp_path / "clip")))
    x = torch.randn(2, 3, 32, 32)
    experts = random_modules(clip, LoRAConfig(rank=2), 3)
    head = head_config_for(clip, "classification", 4)
    model = TaskModel(clip, head, plugin=aggregate(experts, clip, "ens", True)).eval()
    with torch.no_grad():
        assert close(fold_lora(model)(x), model(x))
    single = TaskModel(clip, head, plugin=experts[0]).eval()
    with torch.no_grad():
        assert close(fold_lora(single)(x), single(x))


def test_fold_refuses_convpass(lite0) -> None:
    model = TaskModel(lite0, head_config_for(lite0, "classification", 3),
                      plugin=aggregate(random_modules(lite0, ConvpassConfig(), 2), lite0, "ens", True))
    with pytest.raises(VimwError, match="only lora"):
        fold_lora(model)


def _lora_downstream(tmp_path, backbone, kind_config):
    from vimw.zoo import Zoo
    from vimw.zoo.manifest import ModuleManifest

    zoo = Zoo(tmp_path / "zoo")
    experts = random_modules(backbone, kind_config, 2)
    names = ["a", "b"]
    for name, module in zip(names, experts):
        zoo.add(ModuleManifest(
            name=name, module=module.config.to_dict(),
            backbone={"arch": backbone.arch, "fingerprint": backbone.fingerprint(), "image_size": backbone.preprocess.size},
            task={"name": "t"}, weights={}), module)
    agg = aggregate([zoo.load(n, backbone) for n in names], backbone, "ens", True)
    model = TaskModel(backbone, head_config_for(backbone, "classification", 3), plugin=agg).eval()
    index = zoo.read_index()
    save_downstream(tmp_path / "model", model, {
        "method": "ens",
        "zoo": {"path": str(zoo.root), "modules": [{"name": n, "sha256": index[n]["sha256"]} for n in names]},
        "aggregation": {"mode": "ens", "top_k": 2, "single_index": None},
        "class_names": ["x", "y", "z"],
    })
    return model


def test_export_round_trip(tmp_path) -> None:
    backbone = create_backbone("efficientnet_lite0", image_size=64)  # pretrained: load_downstream rebuilds it
    model = _lora_downstream(tmp_path, backbone, LoRAConfig(rank=2, first_block=8))
    payload = export_folded(tmp_path / "model", tmp_path / "folded.safetensors")
    assert payload["arch"] == "efficientnet_lite0" and payload["image_size"] == 64
    assert payload["class_names"] == ["x", "y", "z"] and len(payload["source_model"]["weights_sha256"]) == 64
    assert (tmp_path / "folded.safetensors.json").is_file()
    loaded, manifest = load_exported(tmp_path / "folded.safetensors")
    assert loaded.plugin is None and manifest["kind"] == "folded_lora"
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    x = backbone.preprocess(images)
    assert torch.equal(loaded.backbone.preprocess(images), x)
    with torch.no_grad():
        assert close(loaded(x), model(x))
        assert close_scaled(hidden(loaded.backbone, x, None), hidden(backbone, x, model.plugin.bypass))


def test_export_cli_refuses_convpass(tmp_path, capsys) -> None:
    from vimw.cli.main import main

    backbone = create_backbone("efficientnet_lite0", image_size=64)
    _lora_downstream(tmp_path, backbone, ConvpassConfig(first_block=12))
    code = main(["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "x.safetensors")])
    assert code == 2 and "only lora" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


# -- prefix cache -------------------------------------------------------------------------------
def _task(n_train=24, n_val=12, size=64, classes=3):
    from vimw.data import ImageSet, TaskData
    from vimw.data.tasks import TaskSpec

    g = torch.Generator().manual_seed(0)
    names = tuple(f"c{i}" for i in range(classes))

    def split(n, name):
        targets = torch.arange(n) % classes
        images = (torch.rand(n, 3, size, size, generator=g) * 60 + targets.view(-1, 1, 1, 1) * 60).to(torch.uint8)
        return ImageSet(images, targets, names, name)

    spec = TaskSpec(name="perf-test", dataset="synthetic")
    return TaskData(spec, split(n_train, "train"), split(n_val, "val"), split(n_val, "test"))


def test_prefix_cache_gives_identical_logits(lite0) -> None:
    data = _task()
    torch.manual_seed(0)
    module = ModuleSet.create(ConvpassConfig(first_block=8), lite0.sites)
    model = TaskModel(lite0, head_config_for(lite0, "classification", 3), plugin=module).eval()
    cache = model.enable_prefix_cache()
    assert cache is not None and cache.start == 8
    index = torch.tensor([3, 1, 7])
    with torch.no_grad():
        want = model(lite0.preprocess(data.train.images[index]))
        first = model.forward_cached(data.train.images, index)  # computes and stores
        again = model.forward_cached(data.train.images, index)  # reads the cache
    assert torch.equal(first, want) and torch.equal(again, want)
    assert cache.hits == 3 and cache.misses == 3


def test_prefix_cache_fit_same_validation(lite0) -> None:
    data = _task()
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-2, seed=0)
    results = []
    for use_cache in (False, True):
        torch.manual_seed(0)
        module = ModuleSet.create(ConvpassConfig(first_block=8, dropout=0.0), lite0.sites)
        model = TaskModel(lite0, head_config_for(lite0, "classification", 3), plugin=module)
        result = fit(model, data, config, progress=False, prefix_cache=(1 << 26) if use_cache else None)
        logits = predict_logits(model, data.val.images)
        results.append((result, logits, model.prefix_cache))
    (plain, plain_logits, _), (cached, cached_logits, cache) = results
    assert cache is not None and cache.hits > 0
    assert [h["val_accuracy"] for h in plain.history] == [h["val_accuracy"] for h in cached.history]
    assert torch.allclose(plain_logits, cached_logits, atol=1e-5, rtol=1e-5)


def test_prefix_cache_linear_probe_and_size_limit(lite0) -> None:
    data = _task()
    model = TaskModel(lite0, head_config_for(lite0, "classification", 3))
    cache = model.enable_prefix_cache(max_bytes=5 * 1280 * 4)  # room for 5 pooled features
    assert cache.pooled
    index = torch.arange(10)
    with torch.no_grad():
        want = model(lite0.preprocess(data.train.images[index]))
        for _ in range(2):
            assert torch.allclose(model.forward_cached(data.train.images, index), want, atol=1e-6)
    assert cache.bytes_used <= 5 * 1280 * 4 and cache.hits == 5


def test_prefix_cache_refused_when_backbone_trains(lite0) -> None:
    import copy

    tuned = copy.deepcopy(lite0).unfreeze()
    model = TaskModel(tuned, head_config_for(tuned, "classification", 3))
    assert model.enable_prefix_cache() is None

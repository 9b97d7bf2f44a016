"""ViM aggregation over a frozen zoo: what trains, what the modes compute, saved models, plots."""

from __future__ import annotations

import pytest
import torch

from conftest import ZOO_MODULES
from vimw.aggregation import (
    ZooAggregate,
    load_downstream,
    merge_parameters,
    save_downstream,
    softmax_gates,
    topk_gates,
)
from vimw.errors import IntegrityError
from vimw.modules import LoRAConfig, ModuleSet
from vimw.training import TrainConfig, fit, predict_logits
from vimw.methods import build_model, train_downstream
from vimw.zoo import ModuleManifest

NAMES = list(ZOO_MODULES)


@pytest.fixture
def config() -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=16, lr=1e-2, eval_batch_size=64)


@pytest.fixture(scope="module")
def experts(tiny_zoo, lite0) -> list[ModuleSet]:
    return [tiny_zoo.load(name, lite0) for name in NAMES]


@pytest.fixture(scope="module")
def pixels(lite0, make_task) -> torch.Tensor:
    return lite0.preprocess(make_task(n_test=6).test.images)


def features(backbone, pixels, bypass) -> torch.Tensor:
    with torch.no_grad():
        return backbone(pixels, bypass=bypass)


def random_lora(backbone, seed: int) -> ModuleSet:
    generator = torch.Generator().manual_seed(seed)
    module = ModuleSet.create(LoRAConfig(rank=4, alpha=8.0), backbone.sites)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return module.eval()


def assert_same_outputs(got: torch.Tensor, want: torch.Tensor, batched: bool) -> None:
    """The reference loop must be bit-exact; the grouped (batched) path sums in another
    order, so it is held to float32 rounding only."""
    if batched:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(got, want)


def tensors_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# -- what trains ---------------------------------------------------------------------------------
def test_only_gates_and_head_are_trainable(tiny_zoo, lite0, make_task):
    model, _ = build_model("ens", lite0, make_task(), zoo=tiny_zoo)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"plugin.gate_logits", "head.fc.weight", "head.fc.bias"}
    assert model.num_trainable() == len(lite0.sites) * len(NAMES) + 1280 * 3 + 3


def test_training_changes_gates_and_head_but_not_backbone_or_zoo(tiny_zoo, lite0, make_task, config):
    data = make_task()
    model, _ = build_model("ens", lite0, data, zoo=tiny_zoo)
    backbone_before = tensors_of(lite0)
    experts_before = [tensors_of(e) for e in model.plugin.experts]
    gates_before, head_before = model.plugin.gate_logits.detach().clone(), tensors_of(model.head)

    fit(model, data, config.replace(epochs=2), progress=False)

    assert all(torch.equal(v, lite0.state_dict()[k]) for k, v in backbone_before.items())
    for expert, before in zip(model.plugin.experts, experts_before):
        assert all(not p.requires_grad and p.grad is None for p in expert.parameters())
        assert all(torch.equal(v, expert.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in lite0.parameters())
    assert not torch.equal(model.plugin.gate_logits.detach(), gates_before)
    assert any(not torch.equal(v, model.head.state_dict()[k]) for k, v in head_before.items())


# -- what the modes compute ------------------------------------------------------------------------
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "loop"])
@pytest.mark.parametrize("chosen", range(len(NAMES)))
def test_ens_with_one_hot_gates_reproduces_that_module(chosen, batched, experts, lite0, pixels):
    aggregate = ZooAggregate(experts, NAMES, lite0, mode="ens", batched=batched).eval()
    with torch.no_grad():
        aggregate.gate_logits.fill_(-1e4)
        aggregate.gate_logits[:, chosen] = 0.0
    assert torch.equal(aggregate.gates()[:, chosen], torch.ones(len(lite0.sites)))
    expected = features(lite0, pixels, experts[chosen].bypass)
    assert_same_outputs(features(lite0, pixels, aggregate.bypass), expected, batched)
    assert not torch.equal(expected, features(lite0, pixels, None))  # the module does act


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "loop"])
def test_ens_with_one_hot_gates_keeps_gradients_to_every_gate(batched, experts, lite0, pixels):
    aggregate = ZooAggregate(experts, NAMES, lite0, mode="ens", batched=batched).eval()
    with torch.no_grad():
        aggregate.gate_logits.fill_(-1e4)
        aggregate.gate_logits[:, 0] = 0.0
    expected = features(lite0, pixels, experts[0].bypass)
    out = lite0(pixels, bypass=aggregate.bypass)
    assert_same_outputs(out.detach(), expected, batched)
    out.sum().backward()
    assert aggregate.gate_logits.grad is not None and aggregate.gate_logits.grad.shape == (len(lite0.sites), 3)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "loop"])
def test_merge_equals_ens_for_lora_modules(batched, lite0, pixels):
    # LoRA is linear: sum_i g_i s B_i A_i z is one merged update, so merging must be exact.
    loras = [random_lora(lite0, seed) for seed in range(3)]
    names = ["lora-a", "lora-b", "lora-c"]
    gate_logits = torch.randn(len(lite0.sites), 3, generator=torch.Generator().manual_seed(7))
    outputs = {}
    for mode in ("ens", "merge"):
        aggregate = ZooAggregate(loras, names, lite0, mode=mode, batched=batched).eval()
        with torch.no_grad():
            aggregate.gate_logits.copy_(gate_logits)
        outputs[mode] = features(lite0, pixels, aggregate.bypass)
    assert not torch.allclose(outputs["ens"], features(lite0, pixels, None), atol=1e-3)
    # Exact in real arithmetic; float32 summation order differs, so allow rounding
    # relative to the features' size after 16 blocks.
    torch.testing.assert_close(outputs["merge"], outputs["ens"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "loop"])
def test_topk_with_k1_equals_the_argmax_module_at_each_site(batched, experts, lite0, pixels):
    aggregate = ZooAggregate(experts, NAMES, lite0, mode="topk", top_k=1, batched=batched).eval()
    with torch.no_grad():
        aggregate.gate_logits.copy_(torch.randn(len(lite0.sites), 3, generator=torch.Generator().manual_seed(3)))
    winners = aggregate.gate_logits.argmax(dim=1).tolist()
    assert len(set(winners)) > 1  # the test mixes modules across sites
    by_hand = {site: experts[w][site] for site, w in zip(aggregate.site_names, winners)}
    assert_same_outputs(features(lite0, pixels, aggregate.bypass), features(lite0, pixels, by_hand), batched)


def test_uniform_has_no_trainable_gates(tiny_zoo, lite0, make_task, config):
    data = make_task()
    model, _ = build_model("uniform", lite0, data, zoo=tiny_zoo)
    assert not model.plugin.gate_logits.requires_grad and model.plugin.num_trainable() == 0
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.fc.weight", "head.fc.bias"}
    torch.testing.assert_close(model.plugin.gates(), torch.full((len(lite0.sites), 3), 1 / 3))
    fit(model, data, config, progress=False)
    assert torch.equal(model.plugin.gate_logits, torch.zeros(len(lite0.sites), 3))


@pytest.mark.slow
def test_single_picks_the_module_with_the_best_validation_score(tiny_zoo, lite0, make_task, config):
    result = train_downstream("single", lite0, make_task(pattern="blocks"), config, zoo=tiny_zoo)
    scores = result.info["single_val_scores"]
    assert list(scores) == NAMES
    chosen = result.info["chosen"]
    assert scores[chosen] == max(scores.values())
    index = NAMES.index(chosen)
    gates = result.model.plugin.gates()
    assert result.model.plugin.mode == "single"
    assert torch.equal(gates[:, index], torch.ones(len(lite0.sites)))
    assert result.trainable == 1280 * 3 + 3  # only the head


# -- gate math --------------------------------------------------------------------------------------
def test_softmax_gates_give_absent_modules_zero():
    available = torch.tensor([[True, False, True]])
    gates = softmax_gates(torch.tensor([[0.0, 5.0, 0.0]]), available)
    assert torch.equal(gates, torch.tensor([[0.5, 0.0, 0.5]]))


def test_topk_gates_keep_k_per_row_summing_to_one():
    gates = topk_gates(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), 2)
    assert ((gates > 0).sum(dim=1) == 2).all()
    torch.testing.assert_close(gates.sum(dim=1), torch.ones(5))


def test_merge_parameters_is_the_weighted_sum():
    states = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, -1.0])}]
    merged = merge_parameters(states, torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(merged["w"], torch.tensor([2.5, -0.25]))


# -- the downstream model on disk ------------------------------------------------------------------
def save_trained(method, zoo, backbone, data, config, directory):
    result = train_downstream(method, backbone, data, config, zoo=zoo)
    save_downstream(directory, result.model, {"method": method, **result.info, "class_names": list(data.class_names)})
    return result


@pytest.mark.parametrize("method", ["ens", "topk", "linear_probe", "scratch"])
def test_saved_downstream_model_reloads_with_identical_logits(method, tiny_zoo, lite0, make_task, config, tmp_path):
    data = make_task()
    result = save_trained(method, tiny_zoo, lite0, data, config, tmp_path / "model")
    loaded, manifest = load_downstream(tmp_path / "model", backbone=lite0)
    assert manifest["method"] == method and manifest["backbone"]["fingerprint"] == lite0.fingerprint()
    assert torch.equal(predict_logits(loaded, data.test.images), predict_logits(result.model, data.test.images))
    if method in ("ens", "topk"):
        assert torch.equal(loaded.plugin.gate_logits, result.model.plugin.gate_logits)
        assert [m["name"] for m in manifest["zoo"]["modules"]] == NAMES


def test_saved_model_rebuilds_its_own_backbone(tiny_zoo, lite0, make_task, config, tmp_path):
    data = make_task()
    result = save_trained("ens", tiny_zoo, lite0, data, config, tmp_path / "model")
    loaded, _ = load_downstream(tmp_path / "model")  # creates Lite0 at 40 px from the manifest
    assert loaded.backbone is not lite0 and loaded.backbone.preprocess.size == 40
    assert torch.equal(predict_logits(loaded, data.test.images), predict_logits(result.model, data.test.images))


@pytest.fixture
def saved_over_copy(zoo_copy, lite0, make_task, config, tmp_path):
    save_trained("ens", zoo_copy, lite0, make_task(), config, tmp_path / "model")
    return zoo_copy, tmp_path / "model"


def test_loading_after_a_zoo_module_was_removed_names_it(saved_over_copy, lite0):
    zoo, model_dir = saved_over_copy
    zoo.remove("syn-dots")
    with pytest.raises(IntegrityError, match="syn-dots") as excinfo:
        load_downstream(model_dir, backbone=lite0)
    assert "missing" in str(excinfo.value)


def test_loading_after_a_zoo_module_was_replaced_names_it(saved_over_copy, lite0):
    zoo, model_dir = saved_over_copy
    old = zoo.manifest("syn-blocks")
    module = zoo.load("syn-blocks", lite0)
    with torch.no_grad():
        next(iter(module.parameters())).add_(1.0)
    zoo.add(ModuleManifest.from_dict(old.to_dict()), module, overwrite=True)
    with pytest.raises(IntegrityError, match="syn-blocks") as excinfo:
        load_downstream(model_dir, backbone=lite0)
    assert "changed" in str(excinfo.value)


def test_loading_after_a_zoo_weights_file_was_edited_names_it(saved_over_copy, lite0):
    zoo, model_dir = saved_over_copy
    path = zoo.module_dir("syn-bands") / "module.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="syn-bands"):
        load_downstream(model_dir, backbone=lite0)


# -- the gate heatmap ----------------------------------------------------------------------------------
def test_zoo_methods_without_a_zoo_are_refused(lite0, make_task, config):
    from vimw.errors import VimwError

    for method in ("ens", "single"):
        with pytest.raises(VimwError, match="zoo"):
            train_downstream(method, lite0, make_task(), config, zoo=None)


def test_gate_heatmap_png_is_written(experts, lite0, tmp_path):
    from PIL import Image

    from vimw.aggregation.plot import plot_gates

    aggregate = ZooAggregate(experts, NAMES, lite0, mode="ens")
    with torch.no_grad():
        aggregate.gate_logits.copy_(torch.randn(len(lite0.sites), 3, generator=torch.Generator().manual_seed(0)))
    plot_gates(aggregate, tmp_path / "gates.png", title="test")
    assert (tmp_path / "gates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(tmp_path / "gates.png") as image:
        assert image.width > 100 and image.height > 100


@pytest.mark.parametrize("method", ["ens", "scratch"])
def test_train_downstream_with_the_same_seed_gives_the_same_model(method, tiny_zoo, lite0, make_task, config):
    data = make_task()
    states = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)  # whatever the caller's RNG state
        result = train_downstream(method, lite0, data, config.replace(seed=11), zoo=tiny_zoo)
        states.append({k: v for k, v in result.model.state_dict().items() if not k.startswith("backbone.")})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])

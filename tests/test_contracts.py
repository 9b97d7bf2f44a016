"""One contract over every registered part: each backbone x each module kind.

Cases come from the registries themselves (``list_backbones()``, ``list_module_kinds()``),
plus every HF transformers family at a tiny random size, plus a toy backbone and a toy
module kind registered here through the public decorators (and removed afterwards). A
new backbone or kind joins the suite by registering; nothing here lists them by name.

The contract, for a backbone B and a kind K:

- a freshly created K module on B is a no-op (B's features are unchanged);
- a trained (here: randomised) module saved to a zoo loads back with identical outputs;
- loading it into a backbone with other weights is refused (fingerprint);
- a zoo aggregate of K modules gives the same output batched and looped, in every mode;
- ``merge`` over copies of one module equals that module, and equals ``ens`` when K
  declares itself ``foldable`` (linear, ``delta_weight``); such modules fold into B's
  weights when B supports folding, and folding anything else is refused with a clear error;
- a kind that declares a stacked runner takes the batched path; a kind that declares a
  PEFT mapping round-trips its config through it.

The toy kind declares every capability but PEFT (a stacked runner, foldable, mergeable),
all inside this file: adding a kind touches only its own code.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import IMAGE_SIZE
from vimw.aggregation import ZooAggregate
from vimw.aggregation.fold import fold_into_backbone, lora_deltas
from vimw.backbones import Backbone, Preprocess, Site, create_backbone, list_backbones, register_backbone
from vimw.backbones import _registry as backbone_registry
from vimw.errors import BackboneMismatchError, RegistryError, VimwError
from vimw.modules import (
    ModuleConfig,
    ModuleSet,
    SiteModule,
    StackedModules,
    get_module_kind,
    list_module_kinds,
    register_module_kind,
    unregister_module_kind,
)
from vimw.modules import registry as module_registry
from vimw.zoo import ModuleManifest, Zoo

torch.set_num_threads(1)

TOY_BACKBONE = "contract-toy"
TOY_KIND = "contract-linear"
HF_FAMILIES = ("clip", "vit", "dinov2", "siglip")
HF_SIZE = 32  # the tiny HF configs' native size: a 4 x 4 patch grid


# -- a toy backbone and a toy module kind, written as a user would -------------------------
class ToyBackbone(Backbone):
    """Two residual blocks on feature maps, the second strided; ``inner`` taps read the
    input of each block's final 1x1 projection."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.arch = TOY_BACKBONE
        self.stem_conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.expand = nn.ModuleList(nn.Conv2d(8, 16, 3, stride=s, padding=1) for s in (1, 2))
        self.project = nn.ModuleList(nn.Conv2d(16, 8, 1) for _ in range(2))
        self.sites = tuple(Site(f"toy{i}", i, 8, 8, s, "nchw", 16) for i, s in enumerate((1, 2)))
        self.num_blocks, self.feature_dim = 2, 8
        self.preprocess = Preprocess(image_size, (0.5,) * 3, (0.5,) * 3)

    def stem(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.stem_conv(pixels))

    def run_block(self, index, hidden, bypass):
        site = self.sites[index]
        module = bypass.get(site.name) if bypass else None
        z = torch.relu(self.expand[index](hidden))
        out = self.project[index](z)
        if module is not None and module.tap == "inner":
            out = out + module(z)
        out = out + (hidden if site.stride == 1 else F.avg_pool2d(hidden, 2, ceil_mode=True))
        if module is not None and module.tap == "input":
            out = out + module(hidden)
        return out

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.mean(dim=(2, 3))


def toy_backbone_factory(image_size: int | None = None) -> ToyBackbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # fixed "pretrained" weights: same fingerprint every time
        return ToyBackbone(image_size or 32).eval()


@dataclass
class LinearConfig(ModuleConfig):
    """A toy kind: a zero-initialised dense linear map of the inner tap (a full-rank LoRA)."""

    kind: ClassVar[str] = TOY_KIND


class LinearModule(SiteModule):
    tap = "inner"

    def __init__(self, site: Site, config: LinearConfig) -> None:
        super().__init__(site, config)
        self.weight = nn.Parameter(torch.zeros(site.out_channels, site.inner_channels))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.site.layout != "nchw":
            return z @ self.weight.T
        return F.conv2d(z, self.weight[:, :, None, None])

    def delta_weight(self) -> torch.Tensor:
        """Its fold rule: the map itself."""
        return self.weight


class StackedLinear(StackedModules):
    """The toy's stacked runner: the gate-weighted sum of the N maps is one map."""

    names = ("weight",)

    def prepare(self, w: dict[str, torch.Tensor], gates: torch.Tensor) -> dict[str, torch.Tensor]:
        dense = torch.tensordot(gates.to(w["weight"].dtype), w["weight"], dims=1)
        return {"down": dense, "up": dense}  # one matrix: the first map and the last

    def apply(self, p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        return self._channels(h, p["up"], None)


def register_toy_kind() -> None:
    register_module_kind(TOY_KIND, LinearConfig, stacked=StackedLinear, foldable=True, mergeable=True)(LinearModule)


@contextmanager
def registered_toys() -> Iterator[None]:
    """Register the toys through the public decorators; remove them again afterwards."""
    register_backbone(TOY_BACKBONE, "a toy backbone for the contract tests", 32)(toy_backbone_factory)
    register_toy_kind()
    try:
        yield
    finally:
        backbone_registry._REGISTRY.pop(TOY_BACKBONE, None)
        unregister_module_kind(TOY_KIND)


@pytest.fixture(scope="module", autouse=True)
def toys():
    with registered_toys():
        yield


# -- the cases: read from the registries ------------------------------------------------------
REGISTERED = [entry.name for entry in list_backbones()]
BACKBONES = REGISTERED + [f"hf-{family}" for family in HF_FAMILIES] + [TOY_BACKBONE]
with registered_toys():
    KINDS = list_module_kinds()  # the toy kind is among them by registering, not by name
    PEFT_KINDS = [kind for kind in KINDS if get_module_kind(kind).peft is not None]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, toys):
    """name -> backbone, built on first use and shared by the module's tests."""
    built: dict[str, Backbone] = {}

    def get(name: str) -> Backbone:
        if name not in built:
            if name.startswith("hf-"):
                pytest.importorskip("transformers")
                from vimw.backbones.hf_vit import save_tiny_hf

                directory = save_tiny_hf(name[3:], tmp_path_factory.mktemp(name), seed=0)
                built[name] = create_backbone(f"hf:{directory}", image_size=HF_SIZE)
            else:
                built[name] = create_backbone(name, image_size=IMAGE_SIZE)
        return built[name]

    return get


def _pixels(backbone: Backbone) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return backbone.preprocess(torch.rand(2, 3, 20, 20, generator=generator))


def _fresh(kind: str, backbone: Backbone, seed: int = 0) -> ModuleSet:
    torch.manual_seed(seed)
    config = get_module_kind(kind).config_cls()
    try:
        return ModuleSet.create(config, backbone.sites).eval()
    except BackboneMismatchError as exc:  # a kind may not fit a site layout; it must say so
        pytest.skip(f"{kind} does not attach to {backbone.arch}: {exc}")


def _trained(kind: str, backbone: Backbone, seed: int) -> ModuleSet:
    """A module with random weights everywhere, as if trained."""
    module = _fresh(kind, backbone, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return module


def _features(backbone: Backbone, pixels: torch.Tensor, bypass=None) -> torch.Tensor:
    with torch.no_grad():
        return backbone.forward_features(pixels, bypass=bypass)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = max(1.0, float(a.abs().max()))
    return torch.allclose(a, b, rtol=1e-4, atol=1e-4 * scale)


def _add(zoo: Zoo, name: str, module: ModuleSet, backbone: Backbone) -> None:
    manifest = ModuleManifest(name=name, module=module.config.to_dict(), backbone=backbone.record().to_dict(),
                              task={"name": "contract", "dataset": "none"}, weights={})
    zoo.add(manifest, module)


def _other_weights(backbone: Backbone) -> Backbone:
    """The same architecture with one weight changed: a different fingerprint."""
    other = copy.deepcopy(backbone)
    other._fingerprint = None
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    return other


def _case(backbone_name: str, kind: str) -> str:
    return f"{backbone_name}-{kind}"


CASES = [pytest.param(b, k, id=_case(b, k)) for b in BACKBONES for k in KINDS]


# -- the contract ---------------------------------------------------------------------------
@pytest.mark.parametrize("backbone_name, kind", CASES)
def test_a_new_module_is_a_no_op_and_a_trained_one_is_not(backbone_name, kind, backbones):
    backbone = backbones(backbone_name)
    pixels = _pixels(backbone)
    plain = _features(backbone, pixels)
    assert torch.equal(_features(backbone, pixels, _fresh(kind, backbone).bypass), plain)
    # The check above is only worth something if a module can change the output at all.
    assert not _close(_features(backbone, pixels, _trained(kind, backbone, seed=1).bypass), plain)


@pytest.mark.parametrize("backbone_name, kind", CASES)
def test_save_load_round_trip_and_fingerprint_refusal(backbone_name, kind, backbones, tmp_path):
    backbone = backbones(backbone_name)
    module = _trained(kind, backbone, seed=2)
    zoo = Zoo(tmp_path / "zoo")
    _add(zoo, "m", module, backbone)
    assert zoo.verify() == []
    loaded = zoo.load("m", backbone)
    pixels = _pixels(backbone)
    assert torch.equal(_features(backbone, pixels, loaded.bypass), _features(backbone, pixels, module.bypass))
    with pytest.raises(BackboneMismatchError, match="fingerprint"):
        zoo.load("m", _other_weights(backbone))


@pytest.mark.parametrize("mode", ["ens", "topk", "merge"])
@pytest.mark.parametrize("backbone_name, kind", CASES)
def test_batched_aggregation_equals_the_looped_reference(backbone_name, kind, mode, backbones):
    backbone = backbones(backbone_name)
    experts = [_trained(kind, backbone, seed=s) for s in (3, 4, 5)]
    names = ["a", "b", "c"]
    batched = ZooAggregate(experts, names, backbone, mode=mode, top_k=2, batched=True)
    looped = ZooAggregate(experts, names, backbone, mode=mode, top_k=2, batched=False)
    if get_module_kind(kind).stacked_cls is not None:  # the comparison is not vacuous
        assert all(batched.is_batched(site) for site in batched.site_names)
    assert not any(looped.is_batched(site) for site in looped.site_names)
    with torch.no_grad():
        logits = torch.randn(batched.gate_logits.shape, generator=torch.Generator().manual_seed(6))
        batched.gate_logits.copy_(logits)
        looped.gate_logits.copy_(logits)
    pixels = _pixels(backbone)
    assert _close(_features(backbone, pixels, batched.bypass), _features(backbone, pixels, looped.bypass))


@pytest.mark.parametrize("backbone_name, kind", CASES)
def test_merge_of_copies_is_the_module_and_linear_kinds_fold(backbone_name, kind, backbones):
    backbone = backbones(backbone_name)
    pixels = _pixels(backbone)
    module = _trained(kind, backbone, seed=7)
    alone = _features(backbone, pixels, module.bypass)
    copies = ZooAggregate([module, copy.deepcopy(module)], ["a", "b"], backbone, mode="merge")
    assert _close(_features(backbone, pixels, copies.bypass), alone)

    if not get_module_kind(kind).foldable:
        with pytest.raises(VimwError, match=f"only .* can be folded.*{kind} modules are non-linear"):
            lora_deltas(module)
        return
    experts = [module, _trained(kind, backbone, seed=8)]
    merged = ZooAggregate(experts, ["a", "b"], backbone, mode="merge")
    ens = ZooAggregate(experts, ["a", "b"], backbone, mode="ens")
    assert _close(_features(backbone, pixels, merged.bypass), _features(backbone, pixels, ens.bypass))
    try:
        folded = fold_into_backbone(backbone, lora_deltas(module))
    except VimwError as exc:
        assert "not supported" in str(exc) and backbone.arch in str(exc)
        return
    assert folded.fingerprint() != backbone.fingerprint()
    assert _close(_features(folded, pixels), alone)


# -- the registries themselves ----------------------------------------------------------------
@pytest.mark.parametrize("kind", PEFT_KINDS)
def test_a_peft_mapping_round_trips_the_config_and_names_module_tensors(kind, backbones):
    entry = get_module_kind(kind)
    mapping = entry.peft
    config = entry.config_cls()
    raw = {"peft_type": entry.peft_type, "target_modules": ["any"], **mapping.to_peft(config)}
    assert mapping.from_peft(raw, "adapter_config.json") == config
    assert set(mapping.import_record(raw)) and entry.peft_type == mapping.peft_type
    module = _fresh(kind, backbones("efficientnet_lite0"))
    site = module.site_names[0]
    assert {f"{site}.{name}" for name in mapping.weight_names} == {k for k in module.state_dict() if k.startswith(site + ".")}


def test_a_kind_that_is_not_mergeable_is_refused_by_mode_merge():
    @dataclass
    class Config(ModuleConfig):
        kind: ClassVar[str] = "contract-unmergeable"

    register_module_kind("contract-unmergeable", Config, mergeable=False)(type("Module", (LinearModule,), {}))
    try:
        backbone = toy_backbone_factory(32)
        experts = [ModuleSet.create(Config(), backbone.sites) for _ in range(2)]
        ZooAggregate(experts, ["a", "b"], backbone, mode="ens")
        with pytest.raises(VimwError, match="mergeable"):
            ZooAggregate(experts, ["a", "b"], backbone, mode="merge")
    finally:
        unregister_module_kind("contract-unmergeable")
    assert "contract-unmergeable" not in list_module_kinds()


def test_the_cases_cover_every_registered_part():
    assert set(REGISTERED) <= set(BACKBONES) and {"efficientnet_lite0", TOY_BACKBONE} <= set(BACKBONES)
    assert set(list_module_kinds()) == set(KINDS)  # the toy kind is registered while this module runs
    assert {"convpass", "lora", "adapter", TOY_KIND} <= set(KINDS)


def test_registering_twice_is_refused_and_the_toys_leave_no_trace():
    with pytest.raises(RegistryError, match="registered twice"):
        register_backbone(TOY_BACKBONE, "again", 32)(toy_backbone_factory)
    with pytest.raises(RegistryError, match="registered twice"):
        register_toy_kind()
    assert create_backbone(TOY_BACKBONE).arch == TOY_BACKBONE
    saved_backbones = dict(backbone_registry._REGISTRY)
    saved_kinds = dict(module_registry._REGISTRY)
    backbone_registry._REGISTRY.pop(TOY_BACKBONE)
    assert unregister_module_kind(TOY_KIND).module_cls is LinearModule
    try:
        with registered_toys():
            assert TOY_BACKBONE in [e.name for e in list_backbones()] and TOY_KIND in list_module_kinds()
        assert TOY_BACKBONE not in [e.name for e in list_backbones()] and TOY_KIND not in list_module_kinds()
        with pytest.raises(RegistryError, match=TOY_BACKBONE):
            create_backbone(TOY_BACKBONE)
        with pytest.raises(RegistryError, match=TOY_KIND):
            unregister_module_kind(TOY_KIND)
    finally:
        backbone_registry._REGISTRY.clear()
        backbone_registry._REGISTRY.update(saved_backbones)
        module_registry._REGISTRY.clear()
        module_registry._REGISTRY.update(saved_kinds)


def test_a_kind_whose_config_names_another_kind_is_refused():
    @dataclass
    class Mislabelled(ModuleConfig):
        kind: ClassVar[str] = "something-else"

    with pytest.raises(RegistryError, match="something-else"):
        register_module_kind("contract-mislabelled", Mislabelled)
    assert "contract-mislabelled" not in list_module_kinds()


def test_the_toy_geometry_matches_its_sites():
    backbone = toy_backbone_factory(32)
    hidden = backbone.stem(_pixels(backbone))
    for index, site in enumerate(backbone.sites):
        out = backbone.run_block(index, hidden, None)
        assert out.shape[1] == site.out_channels
        assert out.shape[-1] == math.ceil(hidden.shape[-1] / site.stride)
        hidden = out

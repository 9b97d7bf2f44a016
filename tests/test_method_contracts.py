"""One contract over every registered downstream method (``vimw.methods``), on a real backbone and a tiny zoo.

Cases come from the registry (``list_methods()``), plus a toy method registered here
through the public decorator and removed afterwards: a new method joins the suite by
registering, and nothing here names the methods. For each method M:

- M's settings are searched over its registered grid by the same code ``vimw aggregate``
  and ``auto`` run, and every setting's validation numbers are recorded, the kept one
  being the one the selection rule prefers;
- a saveable M is written by ``save_model`` (the one writer of downstream models), loads
  back with ``load_downstream`` and predicts the same logits; one that cannot be saved is
  refused by ``vimw aggregate`` before anything trains.
"""

from __future__ import annotations

from contextlib import contextmanager
import pytest
import torch

from conftest import synthetic_task
from vimw.aggregation import ZooAggregate, load_downstream
from vimw.aggregation.residual import ZooResidual
from vimw.errors import RegistryError, VimwError
from vimw.evaluation import predict_logits
from vimw.evaluation.selection import best_candidate
from vimw.methods import (
    HEAD_ONLY_GRID,
    DownstreamMethod,
    MethodContext,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)
from vimw.training import TaskModel, TrainConfig
from vimw.training.headfit import head_only
from vimw.workflows.aggregate import AggregateSettings, save_model
from vimw.workflows.compare import SearchSettings, compare_methods

torch.set_num_threads(1)
TOY_METHOD = "contract-frozen-module"


class FrozenFirstModule(DownstreamMethod):
    """A toy method written as a user would: the zoo's first module, frozen, under a new head."""

    def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
        names, experts = ctx.experts(self.name)
        module = experts[0].requires_grad_(False)
        return TaskModel(ctx.backbone, ctx.head(), plugin=module), {"module": module.config.to_dict()}


def register_toy():
    register_method(TOY_METHOD, "the first zoo module, frozen, and a head", grid=HEAD_ONLY_GRID,
                    uses_zoo=True, trains="head")(FrozenFirstModule)


@contextmanager
def registered_toy():
    register_toy()
    try:
        yield
    finally:
        unregister_method(TOY_METHOD)


with registered_toy():
    METHODS = list_methods()  # the toy is among them by registering, not by name


@pytest.fixture(scope="module", autouse=True)
def toy():
    with registered_toy():
        yield


@pytest.fixture(scope="module")
def data():
    return synthetic_task(n_train=9, n_val=6, n_test=6, seed=4)


SEARCH = SearchSettings(steps=2, batch_size=16, augment=False)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_searches_its_grid_saves_loads_and_predicts_the_same(method, lite0, tiny_zoo, data, tmp_path):
    kept = {}
    (row,) = compare_methods(lite0, data, [method], zoo=tiny_zoo, shots=3, settings=SEARCH,
                             on_result=lambda r, result: kept.update(result=result))
    grid = get_method(method).grid
    assert len(row.candidates) == len(grid)  # every setting tried and recorded
    assert all(set(c) >= {"lr", "val", "val_loss", "best_epoch"} for c in row.candidates)
    chosen = row.candidates[best_candidate([{"score": c["val"], "loss": c["val_loss"]} for c in row.candidates])]
    assert (row.lr, row.val) == (chosen["lr"], chosen["val"])  # the rule's choice is the kept one
    result = kept["result"]
    # What a method declares its steps run through is what its trained model does.
    trains = get_method(method).trains
    plugin = result.model.plugin
    assert head_only(result.model) == (trains == "head")
    if trains == "zoo":  # a zoo aggregate, alone or under a new module (ZooResidual), with something to train
        zoo_part = plugin.zoo if isinstance(plugin, ZooResidual) else plugin
        assert isinstance(zoo_part, ZooAggregate) and plugin.num_trainable() > 0
    if trains == "module":
        assert not isinstance(plugin, ZooAggregate) and any(p.requires_grad for p in plugin.parameters())
    if trains == "backbone":
        assert any(p.requires_grad for p in result.model.backbone.parameters())
    if not get_method(method).saved:
        with pytest.raises(VimwError, match="cannot be saved"):
            AggregateSettings(zoo="z", task="t", out="o", method=method).check_flags()
        return
    config = SEARCH.base_config(len(data.train)).replace(lr=row.lr, gate_lr=row.gate_lr)
    save_model(tmp_path / "m", result, data, config, shots=3, test=row.test_metrics,
               search={"candidates": row.candidates})
    loaded, manifest = load_downstream(tmp_path / "m", backbone=lite0)
    assert manifest["method"] == method and manifest["search"]["candidates"] == row.candidates
    torch.testing.assert_close(predict_logits(loaded, data.test.images), predict_logits(result.model, data.test.images))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_true_few_shot_choosing_by_cross_validation_alone(method, lite0, tiny_zoo, data):
    from vimw.workflows.compare import select_and_train

    if method == "single":  # it picks a module on validation images, which true few-shot has none of
        with pytest.raises(VimwError, match="validation images"):
            select_and_train(lite0, data, method, zoo=tiny_zoo, names=None, settings=SEARCH)
        return
    config, result, record = select_and_train(lite0, data, method, zoo=tiny_zoo, names=None, settings=SEARCH)
    cv = record["cross_validation"]
    assert cv["folds"] == 3 and cv["cv"]["images"] == len(data.train)  # 3 shots: one image per class per fold
    assert cv["setting"] in [dict(s) for s in get_method(method).grid] and result.val_score == cv["cv"]["score"]
    assert predict_logits(result.model, data.test.images).shape == (len(data.test), data.num_classes)


def test_the_cases_cover_every_registered_method():
    assert set(METHODS) == set(list_methods()) and TOY_METHOD in METHODS


def test_a_method_name_registers_once_and_auto_is_reserved():
    with pytest.raises(RegistryError):
        register_toy()
    with pytest.raises(RegistryError):
        register_method("auto", "chooses among the others")(FrozenFirstModule)

"""Few-shot aggregation that learns: augmentation, fitted gates, zoo-initialised modules, auto."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from conftest import ZOO_MODULES, write_image_folder
from vimw.aggregation import ZooAggregate, load_downstream, save_downstream
from vimw.aggregation.gatefit import (
    MAX_LOG_SCALE,
    ScaledZooAggregate,
    fit_aggregate_gates,
    fit_gates_cma,
    fit_gates_gradient,
    ridge_loo_accuracy,
    ridge_loo_loss,
)
from vimw.cli.main import main
from vimw.data import get_task_spec
from vimw.errors import VimwError
from vimw.data.augment import AugmentConfig, augment_images, flips_allowed, random_affines, view_generator
from vimw.data.specs import TaskSpec
from vimw.workflows.compare import MethodRow, choose
from vimw.methods import build_model, zoo_average_module

NAMES = list(ZOO_MODULES)


# -- augmentation ---------------------------------------------------------------------------------
def asymmetric_images(n: int = 6, size: int = 12) -> torch.Tensor:
    """Bright left third, dark elsewhere: a mirror moves the bright part to the right."""
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    images[:, :, :, : size // 3] = 255
    return images


def left_minus_right(views: torch.Tensor) -> torch.Tensor:
    half = views.shape[-1] // 2
    return views[..., :half].mean((1, 2, 3)) - views[..., half:].mean((1, 2, 3))


def test_registered_tasks_declare_whether_a_mirror_keeps_the_label():
    assert not flips_allowed(get_task_spec("digits8x8"))
    assert not flips_allowed(get_task_spec("mnist"))
    assert not flips_allowed(get_task_spec("fmnist-rotation"))  # a mirrored quarter turn is another turn
    assert flips_allowed(get_task_spec("fmnist-footwear-bags"))
    assert not flips_allowed(TaskSpec("user", "folder:/x"))  # says nothing: no flips


def test_augmentation_never_flips_a_task_that_declares_flips_unsafe():
    images = asymmetric_images(64)
    crop_free = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), translate=0.0, hflip=True)
    for seed in range(5):
        theta = random_affines(64, AugmentConfig(hflip=True), flip=False, generator=view_generator(seed, 0))
        assert bool((theta[:, 0, 0] > 0).all())  # never a mirror, whatever else the view does
        kept = augment_images(images, crop_free, flip=False, generator=view_generator(seed, 1))
        assert bool((left_minus_right(kept) > 0.5).all())
        torch.testing.assert_close(kept, images.float() / 255, atol=1e-5, rtol=0)
    # The same settings on a task that allows mirrors do mirror about half of the views.
    mirrored = augment_images(images, crop_free, flip=True, generator=view_generator(0, 1))
    share = float((left_minus_right(mirrored) < -0.5).float().mean())
    assert 0.25 < share < 0.75


def test_augmentation_moves_masks_with_their_images():
    images = asymmetric_images(8, 16)
    masks = (images[:, 0] > 0).long()
    views, warped = augment_images(images, AugmentConfig(), flip=True, generator=view_generator(3, 0), masks=masks)
    assert views.shape == (8, 1, 16, 16) and warped.shape == masks.shape and warped.dtype == masks.dtype
    agree = ((views[:, 0] > 0.5).long() == warped).float().mean()
    assert agree > 0.95


# -- fitted gates ---------------------------------------------------------------------------------
class SyntheticZoo(nn.Module):
    """Features = tanh(sum_i gate_i * scale * E_i) at each of two sites, concatenated.

    Module 0 carries the class signal, the others are noise of larger magnitude."""

    def __init__(self, n: int = 36, classes: int = 3, modules: int = 4, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.arange(n) % classes
        signal = 2.0 * torch.randn(classes, dim, generator=g)[self.targets] + 0.5 * torch.randn(n, dim, generator=g)
        noise = [3.0 * torch.randn(n, dim, generator=g) for _ in range(modules - 1)]
        self.outputs = torch.stack([signal, *noise])
        self.gate_logits = nn.Parameter(torch.zeros(2, modules))
        self.log_scale = nn.Parameter(torch.zeros(2))

    def features(self) -> torch.Tensor:
        gates = torch.softmax(self.gate_logits, -1) * self.log_scale.clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE).exp()[:, None]
        return torch.cat([torch.tanh(torch.einsum("m,mnd->nd", gates[s], self.outputs)) for s in range(2)], 1)


@pytest.mark.parametrize("strategy", ["gradient", "cma"])
def test_gate_fit_recovers_the_module_that_carries_the_signal(strategy):
    zoo = SyntheticZoo()
    if strategy == "gradient":
        result = fit_gates_gradient(zoo.gate_logits, zoo.log_scale, zoo.features, zoo.targets, 3, steps=15)
    else:
        result = fit_gates_cma(zoo.gate_logits, zoo.log_scale, zoo.features, zoo.targets, 3, evaluations=40)
    gates = torch.softmax(zoo.gate_logits.detach(), -1)
    assert bool((gates.argmax(-1) == 0).all())
    assert float(gates[:, 0].min()) > 0.5  # from 0.25 at the start
    assert result.objective < result.start_objective
    assert result.loo_accuracy == 1.0


def test_a_non_finite_gate_objective_stops_the_gradient_fit_with_an_error_and_is_counted_by_cma():
    from vimw.errors import TrainingError

    zoo = SyntheticZoo()

    def broken() -> torch.Tensor:  # finite at uniform gates only
        out = zoo.features()
        return out if float(zoo.gate_logits.detach().abs().max()) == 0.0 else out * math.nan

    with pytest.raises(TrainingError, match="gate fit"):
        fit_gates_gradient(zoo.gate_logits, zoo.log_scale, broken, zoo.targets, 3, steps=5)
    zoo = SyntheticZoo()
    result = fit_gates_cma(zoo.gate_logits, zoo.log_scale, broken, zoo.targets, 3, evaluations=12)
    assert result.non_finite > 0 and result.to_dict()["non_finite"] == result.non_finite
    assert math.isfinite(result.objective)  # the uniform start is kept, not a broken candidate
    assert float(zoo.gate_logits.detach().abs().max()) == 0.0


def refit_without_each_point(features: torch.Tensor, targets: torch.Tensor, classes: int, alpha: float):
    """Brute force: for each i, ridge (unpenalised intercept) on the others in the primal, predict i."""
    f, y = features.double(), nn.functional.one_hot(targets, classes).double()
    predictions = []
    for i in range(len(f)):
        keep = torch.arange(len(f)) != i
        f_mean, y_mean = f[keep].mean(0), y[keep].mean(0)
        fc, yc = f[keep] - f_mean, y[keep] - y_mean
        weights = torch.linalg.solve(fc.T @ fc + alpha * torch.eye(f.shape[1], dtype=f.dtype), fc.T @ yc)
        predictions.append(y_mean + (f[i] - f_mean) @ weights)
    predictions = torch.stack(predictions)
    return (y - predictions).pow(2).sum(1).mean().item(), (predictions.argmax(1) == targets).double().mean().item()


@pytest.mark.parametrize("n,dim", [(6, 40), (15, 64), (40, 8), (25, 25)])
@pytest.mark.parametrize("lam", [1e-3, 1e-1, 10.0])
def test_ridge_leave_one_out_equals_refitting_without_each_point(n, dim, lam):
    g = torch.Generator().manual_seed(n * 100 + dim)
    targets = torch.arange(n) % 3
    features = torch.randn(3, dim, generator=g, dtype=torch.float64)[targets] + torch.randn(n, dim, generator=g,
                                                                                         dtype=torch.float64)
    features = features + 5.0  # an offset that only the intercept can absorb
    centred = features - features.mean(0)
    alpha = lam * centred.pow(2).sum(1).mean().item()  # lam is relative to the mean centred energy
    want_loss, want_accuracy = refit_without_each_point(features, targets, 3, alpha)
    loss, used = ridge_loo_loss(features, targets, 3, lambdas=(lam,))
    assert used == lam
    assert abs(loss.item() - want_loss) < 1e-8
    assert abs(ridge_loo_accuracy(features, targets, 3, lam) - want_accuracy) < 1e-12


def test_closed_form_head_is_the_ridge_solution_and_its_choices_see_only_held_out_residuals():
    from vimw.aggregation.closedform import HEAD_LAMBDAS, TEMPERATURES, fit_ridge_head, set_linear_head

    g = torch.Generator().manual_seed(3)
    targets = torch.arange(12) % 3
    features = torch.randn(3, 20, generator=g, dtype=torch.float64)[targets] + 0.7 * torch.randn(12, 20, generator=g,
                                                                                              dtype=torch.float64)
    fitted = fit_ridge_head(features + 3.0, targets, 3)
    assert fitted.chosen_by == "leave-one-out" and fitted.lam in HEAD_LAMBDAS and fitted.temperature in TEMPERATURES
    # The primal ridge solution with an unpenalised intercept, at the chosen lambda.
    f, y = features + 3.0, nn.functional.one_hot(targets, 3).double()
    fc, yc = f - f.mean(0), y - y.mean(0)
    alpha = fitted.lam * fc.pow(2).sum(1).mean()
    weight = torch.linalg.solve(fc.T @ fc + alpha * torch.eye(20, dtype=f.dtype), fc.T @ yc)
    torch.testing.assert_close(fitted.weight, weight.T)
    torch.testing.assert_close(fitted.bias, y.mean(0) - f.mean(0) @ weight)
    # Its leave-one-out accuracy is the refitting one at that lambda.
    _, want_accuracy = refit_without_each_point(f, targets, 3, float(alpha))
    assert abs(fitted.loo_accuracy - want_accuracy) < 1e-12
    head = nn.Linear(20, 3).double()
    set_linear_head(head, fitted)
    torch.testing.assert_close(head(f), fitted.temperature * (f @ fitted.weight.T + fitted.bias))


def test_closed_form_head_with_one_image_per_class_uses_the_fixed_defaults():
    from vimw.aggregation.closedform import ONE_SHOT_LAMBDA, ONE_SHOT_TEMPERATURE, fit_ridge_head

    fitted = fit_ridge_head(torch.randn(4, 10), torch.arange(4), 4)
    assert (fitted.lam, fitted.temperature, fitted.loo_accuracy) == (ONE_SHOT_LAMBDA, ONE_SHOT_TEMPERATURE, None)
    with pytest.raises(VimwError, match="every one of the 4 classes"):
        fit_ridge_head(torch.randn(6, 10), torch.tensor([0, 1, 2, 0, 1, 2]), 4)


def test_closed_form_head_on_a_frozen_zoo_model_predicts_as_the_ridge_on_its_features(tiny_zoo, lite0, make_task):
    from vimw.aggregation.closedform import fit_closed_form_head, fit_ridge_head
    from vimw.training.headfit import frozen_features

    data = make_task(n_train=12, n_val=6, n_test=6)
    model, _ = build_model("uniform", lite0, data, zoo=tiny_zoo)
    fitted = fit_closed_form_head(model, data.train.images, data.train.targets)
    features = frozen_features(model, data.test.images).double()
    direct = fit_ridge_head(frozen_features(model, data.train.images), data.train.targets, data.num_classes)
    with torch.no_grad():
        logits = model.eval()(lite0.preprocess(data.test.images)).double()
    torch.testing.assert_close(logits, fitted.temperature * (features @ direct.weight.T + direct.bias), rtol=1e-4,
                               atol=1e-4)
    scratch, _ = build_model("scratch", lite0, data, zoo=tiny_zoo)
    with pytest.raises(VimwError, match="frozen"):
        fit_closed_form_head(scratch, data.train.images, data.train.targets)


def test_ridge_leave_one_out_cannot_be_won_by_interpolating_the_shots():
    # Pure noise with more features than images: a smaller lambda interpolates better but
    # predicts a left-out image no better, so the loss stays at or above chance level.
    g = torch.Generator().manual_seed(1)
    targets = torch.arange(10) % 2
    noise = torch.randn(10, 500, generator=g)
    loss, _ = ridge_loo_loss(noise, targets, 2, lambdas=(1e-4,))
    chance = nn.functional.one_hot(targets).double().var(0, unbiased=False).sum().item()  # predicting the mean
    assert loss.item() > chance


def test_ridge_leave_one_out_loss_is_scale_free_and_sees_held_out_labels():
    g = torch.Generator().manual_seed(0)
    targets = torch.arange(30) % 3
    informative = torch.randn(3, 8, generator=g)[targets] + 0.1 * torch.randn(30, 8, generator=g)
    noise = torch.randn(30, 8, generator=g)
    good, _ = ridge_loo_loss(informative, targets, 3)
    scaled, _ = ridge_loo_loss(100 * informative, targets, 3)
    bad, _ = ridge_loo_loss(noise, targets, 3)
    assert math.isclose(good.item(), scaled.item(), rel_tol=1e-6)
    assert good.item() < 0.2 < bad.item()  # noise cannot predict an image it did not see


def test_fitted_gates_and_scales_train_nothing_else_and_survive_save_and_load(tiny_zoo, lite0, make_task, tmp_path):
    data = make_task(n_train=12, n_val=6, n_test=6)
    model, info = build_model("gates_ridge", lite0, data, zoo=tiny_zoo)
    assert isinstance(model.plugin, ScaledZooAggregate) and info["aggregation"]["site_scale"]
    result = fit_aggregate_gates(model, data.train.images, data.train.targets, "ridge", steps=2)
    assert result.evaluations == 3
    assert not model.plugin.gate_logits.requires_grad and not model.plugin.log_scale.requires_grad
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.fc.weight", "head.fc.bias"}
    with torch.no_grad():  # make the saved state distinctive
        model.plugin.log_scale.copy_(torch.linspace(-0.5, 0.5, len(model.plugin.site_names)))
    save_downstream(tmp_path / "m", model, {"method": "gates_ridge", **info})
    loaded, _ = load_downstream(tmp_path / "m", backbone=lite0)
    pixels = lite0.preprocess(data.test.images)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixels), model.eval()(pixels))
        torch.testing.assert_close(loaded.plugin.log_scale, model.plugin.log_scale)


# -- the zoo as a frozen prior plus a new module ------------------------------------------------------
def test_zoo_residual_starts_as_the_fitted_aggregate_and_trains_only_the_new_module_and_head(tiny_zoo, lite0,
                                                                                           make_task):
    from vimw.aggregation.residual import ZooResidual
    from vimw.modules import ModuleSet, config_from_dict
    from vimw.training import TaskModel, TrainConfig, fit, head_config_for

    data = make_task(n_train=12, n_val=6, n_test=6)
    gated, _ = build_model("gates_ridge", lite0, data, zoo=tiny_zoo)
    fit_aggregate_gates(gated, data.train.images, data.train.targets, "ridge", steps=2)
    zoo_state = {k: v.clone() for k, v in gated.plugin.state_dict().items()}
    module = ModuleSet.create(config_from_dict(tiny_zoo.manifest(NAMES[0]).module), lite0.sites)
    model = TaskModel(lite0, head_config_for(lite0, data.kind, data.num_classes), plugin=ZooResidual(gated.plugin, module))
    pixels = lite0.preprocess(data.test.images)
    with torch.no_grad():  # the new module adds exactly zero at the start
        torch.testing.assert_close(lite0(pixels, bypass=model.bypass()), lite0(pixels, bypass=gated.plugin.bypass),
                                   rtol=0, atol=0)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"plugin.module", "head.fc"}
    fit(model, data, TrainConfig(epochs=2, lr=1e-2, batch_size=4, seed=0), progress=False)
    for key, value in model.plugin.zoo.state_dict().items():
        assert torch.equal(value, zoo_state[key])  # gates, scales and zoo modules untouched
    assert any(float(p.detach().abs().max()) > 0 for n, p in model.plugin.module.named_parameters() if ".up." in n)


def test_the_zoo_residual_method_is_the_uniform_zoo_at_the_start_with_scratchs_new_module_and_head(tiny_zoo, lite0,
                                                                                                    make_task):
    """The pairing ``zoo_residual`` - ``scratch`` isolates the zoo: the same seeded module and head, and
    below them exactly the frozen uniform zoo ensemble."""
    from vimw.methods import MethodContext, get_method
    from vimw.training import TrainConfig

    data = make_task(n_train=12, n_val=0, n_test=6)
    config = TrainConfig(epochs=1, lr=1e-3, batch_size=4, seed=7)
    residual, info = get_method("zoo_residual").build_seeded(MethodContext(lite0, data, zoo=tiny_zoo), config)
    scratch, _ = get_method("scratch").build_seeded(MethodContext(lite0, data, zoo=tiny_zoo), config)
    _, ridge_info = get_method("zoo_ridge").build_seeded(MethodContext(lite0, data, zoo=tiny_zoo), config)
    assert info["zoo"] == ridge_info["zoo"] and info["aggregation"]["fixed"] == "uniform gates x 1"
    uniform = ZooAggregate([tiny_zoo.load(n, lite0) for n in NAMES], NAMES, lite0, mode="ens")
    for (name, mine), (_, theirs) in zip(residual.plugin.module.state_dict().items(),
                                         scratch.plugin.state_dict().items()):
        assert torch.equal(mine, theirs), name
    for key, value in scratch.head.state_dict().items():
        assert torch.equal(residual.head.state_dict()[key], value)
    pixels = lite0.preprocess(data.test.images)
    with torch.no_grad():
        torch.testing.assert_close(lite0(pixels, bypass=residual.bypass()), lite0(pixels, bypass=uniform.bypass))
    trainable = {n.split(".")[0] for n, p in residual.plugin.named_parameters() if p.requires_grad}
    assert trainable == {"module"}  # the zoo's gates and scales stay fixed


# -- zoo-initialised module -----------------------------------------------------------------------------
def test_zoo_init_at_step_zero_computes_exactly_the_merged_module(tiny_zoo, lite0, make_task):
    data = make_task(n_test=6)
    model, info = build_model("zoo_init", lite0, data, zoo=tiny_zoo)
    assert info["init"]["gates"] == "uniform" and info["module"]["kind"] == "convpass"
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"plugin", "head"}
    experts = [tiny_zoo.load(n, lite0) for n in NAMES]
    merged = ZooAggregate(experts, NAMES, lite0, mode="merge", batched=False).eval()
    pixels = lite0.preprocess(data.test.images)
    model.eval()
    with torch.no_grad():
        want = lite0(pixels, bypass=merged.bypass)
        got = lite0(pixels, bypass=model.plugin.bypass)
    assert torch.equal(got, want)
    assert not torch.equal(got, lite0(pixels))  # the merged module does act
    # One module's parameters, not N.
    assert sum(p.numel() for p in model.plugin.parameters()) == sum(p.numel() for p in experts[0].parameters())


def test_zoo_average_with_one_hot_weights_is_that_module(tiny_zoo, lite0):
    experts = [tiny_zoo.load(n, lite0) for n in NAMES]
    module = zoo_average_module(experts, lite0, torch.tensor([0.0, 1.0, 0.0]))
    for key, value in experts[1].state_dict().items():
        assert torch.equal(module.state_dict()[key], value)


def test_zoo_average_takes_each_sites_own_weights(tiny_zoo, lite0):
    experts = [tiny_zoo.load(n, lite0) for n in NAMES]
    sites = experts[0].site_names
    first, rest = sites[0], sites[1:]
    weights = {first: torch.tensor([0.0, 0.0, 1.0]), **{s: torch.tensor([1.0, 0.0, 0.0]) for s in rest}}
    module = zoo_average_module(experts, lite0, weights)
    for key, value in module.state_dict().items():
        source = experts[2] if key.startswith(f"{first}.") else experts[0]
        assert torch.equal(value, source.state_dict()[key])
    with pytest.raises(VimwError, match="non-negative weights"):
        zoo_average_module(experts, lite0, {first: torch.tensor([1.0, -1.0, 0.0])})


def test_zoo_init_gated_starts_from_the_ridge_gates_average_and_trains_as_one_module(tiny_zoo, lite0, make_task,
                                                                                     tmp_path):
    from vimw.training import TrainConfig
    from vimw.methods import train_downstream

    data = make_task(n_train=12, n_val=6, n_test=6)
    with pytest.raises(VimwError, match="fitted gates"):
        build_model("zoo_init_gated", lite0, data, zoo=tiny_zoo)
    result = train_downstream("zoo_init_gated", lite0, data, TrainConfig(epochs=1, lr=1e-3, batch_size=4, seed=0),
                              zoo=tiny_zoo)
    gates = result.info["init"]["gates"]
    assert set(gates) == set(tiny_zoo.load(NAMES[0], lite0).site_names)
    assert all(abs(sum(g) - 1.0) < 1e-4 for g in gates.values())
    assert any(max(g) - min(g) > 1e-3 for g in gates.values())  # fitted, not uniform
    experts = [tiny_zoo.load(n, lite0) for n in NAMES]
    assert sum(p.numel() for p in result.model.plugin.parameters()) == sum(p.numel() for p in experts[0].parameters())
    save_downstream(tmp_path / "m", result.model, {"method": "zoo_init_gated", **result.info})
    loaded, _ = load_downstream(tmp_path / "m", backbone=lite0)
    pixels = lite0.preprocess(data.test.images)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixels), result.model.eval()(pixels))


# -- auto ----------------------------------------------------------------------------------------
def row(method: str, val: float, val_loss: float, test: float) -> MethodRow:
    return MethodRow(task="t", shots=5, seed=0, method=method, lr=1e-3, gate_lr=None, val=val, test=test,
                     trainable=1, seconds=1.0, epochs=1, val_loss=val_loss)


def test_auto_prefers_the_lower_validation_loss_on_an_accuracy_tie_and_never_reads_test():
    rows = [row("linear_probe", 0.9, 0.40, 0.99), row("scratch", 0.9, 0.30, 0.50), row("uniform", 0.8, 0.10, 1.0)]
    chosen = choose(rows, ("linear_probe", "scratch", "uniform"), "auto")
    assert chosen.method == "auto" and chosen.chosen == "scratch" and chosen.test == 0.50
    assert [c["method"] for c in chosen.candidates] == ["linear_probe", "scratch", "uniform"]
    assert choose(rows, ("uniform",), "best_zoo").chosen == "uniform"
    assert choose(rows, ("ens",), "best_zoo") is None


def test_cross_validated_numbers_replace_the_holdout_ones_when_given():
    rows = [row("scratch", 0.9, 0.30, 0.50), row("uniform", 0.8, 0.10, 1.0)]
    cv = {"scratch": {"score": 0.70, "loss": 0.9}, "uniform": {"score": 0.75, "loss": 0.8}}
    chosen = choose(rows, ("scratch", "uniform"), "best", metrics=cv, selection="3-fold cross-validation")
    assert chosen.chosen == "uniform" and chosen.test == 1.0
    assert chosen.selection.startswith("3-fold cross-validation")
    assert chosen.candidates[0]["cv"] == cv["scratch"]
    # a method without cross-validated numbers is not a candidate
    assert choose(rows, ("scratch", "uniform"), "best", metrics={"scratch": cv["scratch"]}).chosen == "scratch"


def test_vimw_aggregate_runs_auto_by_default_and_says_what_it_chose(tiny_zoo, tmp_path, capsys):
    folder = write_image_folder(tmp_path / "photos", per_class=6)
    out = tmp_path / "model"
    code = main(["aggregate", "--zoo", str(tiny_zoo.root), "--task", f"folder:{folder}", "--shots", "2",
                 "--out", str(out), "--steps", "3", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    auto = manifest["search"]
    tried = [c["method"] for c in auto["candidates"]]
    assert tried == ["ridge_probe", "scratch", "zoo_ridge"]  # auto's candidates, baselines first
    assert manifest["method"] == auto["chosen"] in tried
    assert f"auto chose {auto['chosen']}" in printed
    for method in tried:  # every candidate's cross-validated numbers are printed
        assert method in printed
    assert "cv acc" in printed and "cv loss" in printed and auto["zoo_gain_says"] in printed
    assert manifest["metrics"]["val_images"] == 0  # true few-shot: the 2 shots per class are all the labels
    assert manifest["training"]["augment"] is True


def test_zoo_init_gated_keeps_the_site_scales_its_gates_were_fitted_with(lite0, tiny_zoo):
    from conftest import synthetic_task

    from vimw.methods import MethodContext, get_method, zoo_average_module
    from vimw.methods.zoo_init import scale_site_outputs
    from vimw.training import TrainConfig

    names = tiny_zoo.names()
    experts = [tiny_zoo.load(n, lite0) for n in names]
    plain = zoo_average_module(experts, lite0).eval()
    site = next(iter(plain.keys()))
    x = torch.randn(2, plain[site].site.in_channels, 8, 8)
    before = plain[site](x)
    scale_site_outputs(plain, {site: 2.5})
    torch.testing.assert_close(plain[site](x), 2.5 * before)  # the output, exactly: the last projection scaled
    # The method builds its module from the fitted gates (weights) and the fitted scales (here set by hand).
    weights = {s: torch.tensor([0.5, 0.3, 0.2]) for s in plain.keys()}
    scales = {s: 1.0 + 0.1 * i for i, s in enumerate(plain.keys())}
    ctx = MethodContext(lite0, synthetic_task(n_train=6, n_val=3, n_test=3), zoo=tiny_zoo, names=names)
    config = TrainConfig()
    ctx.cache[("zoo_init_weights", "gates_ridge", config.seed)] = (weights, scales)
    model, info = get_method("zoo_init_gated").build(ctx, config)
    expected = zoo_average_module(experts, lite0, weights)
    for s, scale in scales.items():
        torch.testing.assert_close(model.plugin[s].up.weight, scale * expected[s].up.weight)
        torch.testing.assert_close(model.plugin[s].up.bias, scale * expected[s].up.bias)
    assert info["init"]["site_scales"] == pytest.approx(scales)

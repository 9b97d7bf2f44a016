"""TransMiter workflow: base-to-novel scoring, logit-arithmetic baselines, the fine-tuned weak
model (frozen text rows, trainable plug-in), the calibrated ImageNet head, and the CLI chain
extract -> apply -> refine -> evaluate."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from vimw.backbones import create_backbone
from vimw.errors import DataError
from vimw.modules import ModuleSet, config_from_dict
from vimw.transfer.scoring import (
    base_novel_scores,
    ensemble_logits,
    harmonic_mean,
    proxy_logits,
    select_alpha,
    validation_metrics,
)
from vimw.transfer.teacher import FineTunedZeroShot, TeacherConfig, finetune_teacher, load_teacher, save_teacher


def test_base_novel_scores_on_hand_made_logits():
    base, novel = [0, 1], [2, 3]
    # image 0 (base, label 0): class 2 has the top logit overall, but only base columns count -> 0: right
    # image 1 (base, label 1): base argmax 0 -> wrong
    # image 2 (novel, label 3): novel argmax 3 -> right although column 0 is larger
    # image 3 (novel, label 2): novel argmax 2 -> right
    logits = torch.tensor([
        [5.0, 1.0, 9.0, 0.0],
        [3.0, 2.0, 0.0, 0.0],
        [9.0, 0.0, 1.0, 2.0],
        [0.0, 0.0, 4.0, 3.0],
    ])
    labels = torch.tensor([0, 1, 3, 2])
    scores = base_novel_scores(logits, labels, base, novel)
    assert scores["base"] == pytest.approx(0.5)
    assert scores["novel"] == pytest.approx(1.0)
    assert scores["hm"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert harmonic_mean(0.0, 0.0) == 0.0
    only_base = base_novel_scores(logits[:2], labels[:2], base, novel)
    assert math.isnan(only_base["novel"]) and math.isnan(only_base["hm"])
    with pytest.raises(DataError):
        base_novel_scores(logits, labels, [0, 1], [1, 2])


def test_proxy_and_ensemble_formulas():
    g = torch.Generator().manual_seed(0)
    strong, ft, weak = (torch.randn(6, 5, generator=g) for _ in range(3))
    a = 0.3
    ls = lambda x: F.log_softmax(x, -1)  # noqa: E731
    assert torch.allclose(proxy_logits(strong, ft, weak, a), ls(strong) + a * (ls(ft) - ls(weak)), atol=1e-6)
    assert torch.allclose(ensemble_logits(ft, strong, a), a * ls(ft) + (1 - a) * ls(strong), atol=1e-6)
    assert torch.allclose(proxy_logits(strong, ft, weak, 0.0), ls(strong))
    assert torch.allclose(ensemble_logits(ft, strong, 1.0), ls(ft))
    # select_alpha: every alpha > 0.5 scores HM 1 here; the validation loss breaks the tie
    labels = torch.tensor([0, 1, 2, 3])
    right = torch.eye(4) * 5
    wrong = torch.roll(right, 1, dims=1)
    alpha, candidates = select_alpha(lambda x: ensemble_logits(right, wrong, x), labels, [0, 1], [2, 3])
    scores = {c["alpha"]: c["score"] for c in candidates}
    assert scores[0.0] == 0.0 and scores[1.0] == 1.0
    assert alpha == 1.0  # among the perfect alphas, the one with the lowest validation loss


def test_validation_protocol_base_never_looks_at_novel_images():
    base, novel = [0, 1], [2, 3]
    labels = torch.tensor([0, 1, 2, 3])
    logits = torch.eye(4) * 3
    scrambled = logits.clone()
    scrambled[2:] = logits[[3, 2]]  # every novel image now wrong
    a = validation_metrics(logits, labels, base, novel, "base")
    b = validation_metrics(scrambled, labels, base, novel, "base")
    assert (a["score"], a["loss"], a["base"]) == (b["score"], b["loss"], b["base"]) and a["score"] == 1.0
    assert math.isnan(a["novel"])  # novel images are not even looked at
    assert validation_metrics(scrambled, labels, base, novel, "all")["score"] == 0.0
    with pytest.raises(DataError):
        validation_metrics(logits, labels, base, novel, "test")
    with pytest.raises(DataError):
        validation_metrics(logits[2:], labels[2:], base, novel, "base")


class _FakeHead:
    """The parts of an ImageNetTextHead that FineTunedZeroShot reads."""

    def __init__(self, backbone, num_classes: int) -> None:
        self.backbone = backbone
        self.invert = True
        self.name = "fake-head"
        g = torch.Generator().manual_seed(1)
        self._w = torch.randn(backbone.feature_dim, num_classes, generator=g) * 0.05
        self._b = torch.randn(num_classes, generator=g)
        self.feature_mean = torch.randn(backbone.feature_dim, generator=g) * 0.01

    def class_weights(self, class_names, template):
        return self._w[:, : len(class_names)].clone(), self._b[: len(class_names)].clone()


def test_finetuned_weak_model_keeps_text_rows_frozen_and_trains_only_the_plugin():
    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0", image_size=40)
    head = _FakeHead(backbone, 4)
    plugin = ModuleSet.create(config_from_dict({"kind": "convpass"}), backbone.sites)
    model = FineTunedZeroShot(head, ["a", "b", "c", "d"], plugin)
    rows, bias, mean = model.rows.clone(), model.bias.clone(), model.feature_mean.clone()
    backbone_before = {k: v.clone() for k, v in backbone.state_dict().items()}
    plugin_before = {k: v.clone() for k, v in plugin.state_dict().items()}
    assert not any(isinstance(b, torch.nn.Parameter) for b in (model.rows, model.bias, model.feature_mean))
    assert all(p.requires_grad is False for p in backbone.parameters())
    # a fresh convpass module is a no-op: logits equal the zero-shot head's on the same features
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (12, 1, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.tensor([0, 1] * 6)
    with torch.no_grad():
        feats = backbone.forward_features(backbone.preprocess(255 - images))
        expected = (feats - head.feature_mean) @ head._w + head._b
    assert torch.allclose(model.predict(images), expected, atol=1e-4)

    model, info = finetune_teacher(model, images, labels, images[:4], labels[:4], base=[0, 1], novel=[2, 3],
                                   protocol="base", config=TeacherConfig(lr=1e-2, epochs=2, batch_size=4))
    assert torch.equal(model.rows, rows) and torch.equal(model.bias, bias) and torch.equal(model.feature_mean, mean)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    # the plug-in trained: each epoch after the start has a finite training loss, and the kept
    # weights are the reported best epoch's (the start's only when no epoch beat it)
    assert len(info["history"]) == 3 and info["trainable"] == plugin.num_parameters()
    assert all(math.isfinite(h["train_loss"]) for h in info["history"][1:])
    changed = any(not torch.equal(v, plugin_before[k]) for k, v in model.plugin.state_dict().items())
    assert changed == (info["best_epoch"] > 0)
    assert [h["epoch"] for h in info["history"]] == [0, 1, 2]
    model.plugin.load_state_dict(plugin_before)  # restorable: same keys and shapes
    with pytest.raises(DataError):
        finetune_teacher(model, images, torch.full((12,), 3), images[:4], labels[:4], base=[0, 1], novel=[2, 3],
                         config=TeacherConfig(epochs=1))


def test_finetune_changes_the_plugin_weights():
    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0", image_size=40)
    plugin = ModuleSet.create(config_from_dict({"kind": "convpass"}), backbone.sites)
    model = FineTunedZeroShot(_FakeHead(backbone, 3), ["a", "b", "c"], plugin)
    before = {k: v.clone() for k, v in plugin.state_dict().items()}
    params = model.trainable_parameters()
    assert params and all(any(p is q for q in plugin.parameters()) for p in params)
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    loss = F.cross_entropy(model(images)[:, :2], torch.tensor([0, 1] * 4))
    loss.backward()
    assert not model.rows.requires_grad and model.rows.grad is None  # the text rows get no gradient
    torch.optim.SGD(params, lr=1.0).step()
    assert any(not torch.equal(v, before[k]) for k, v in plugin.state_dict().items())


@pytest.mark.slow
def test_calibrated_kernel_head_subtracts_the_feature_mean():
    from vimw.transfer import ImageNetTextHead

    head = ImageNetTextHead("efficientnet_lite0", 40, invert=True)
    names = ["sneaker", "bag", "dress"]
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    w, b = head.class_weights(names)
    feats = head.encode_images(images, progress=False)
    plain_name = head.name
    head.calibrate(features=feats)
    assert head.name.startswith(plain_name + "+cal")
    assert torch.allclose(head.logits(feats, w, b), (feats - feats.mean(0)) @ w + b, atol=1e-4)
    # an ImageNet class name's kernel row is close to its real classifier row
    rows, _ = head.predict_rows([head.imagenet_names[409]])
    assert F.cosine_similarity(rows[0], head.backbone._fc.weight[409].detach(), dim=0) > 0.5


def test_consistency_term_keeps_the_teacher_closer_to_its_zero_shot_predictions():
    backbone = create_backbone("efficientnet_lite0", image_size=40)
    g = torch.Generator().manual_seed(6)
    images = torch.randint(0, 256, (16, 1, 16, 16), dtype=torch.uint8, generator=g)
    held_out = torch.randint(0, 256, (16, 1, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.tensor([0, 1] * 8)
    drift = []
    for weight in (0.0, 5.0):
        torch.manual_seed(0)
        plugin = ModuleSet.create(config_from_dict({"kind": "convpass"}), backbone.sites)
        model = FineTunedZeroShot(_FakeHead(backbone, 4), ["a", "b", "c", "d"], plugin)
        zero_shot = model.predict(held_out, plugin=False)
        config = TeacherConfig(lr=3e-3, epochs=3, batch_size=8, consistency=weight, warmup_fraction=0.0)
        model, _ = finetune_teacher(model, images, labels, images, labels, base=[0, 1], novel=[2, 3],
                                    protocol="base", config=config)
        tuned = model.predict(held_out)
        drift.append(float(F.kl_div(F.log_softmax(tuned, -1), F.log_softmax(zero_shot, -1), reduction="batchmean",
                                    log_target=True)))
    assert drift[0] > 0.1 and drift[1] < 0.5 * drift[0]


def test_teacher_file_refuses_other_formats(tmp_path):
    from vimw.errors import FormatError

    (tmp_path / "finetuned.json").write_text(json.dumps({"weak": "x", "plugin_source": "convpass"}))
    with pytest.raises(FormatError, match="not a vimw teacher"):
        load_teacher(tmp_path)
    (tmp_path / "finetuned.json").write_text(json.dumps({"format": "vimw.transfer-teacher", "format_version": 99}))
    with pytest.raises(FormatError, match="format_version"):
        load_teacher(tmp_path)


def _cli(argv, capsys):
    from vimw.cli.main import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exit for arguments no command knows ("vimw: error: ...")
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_cli_misuse_of_transfer_exits_2_without_a_traceback(tmp_path, capsys):
    bad_adapter = tmp_path / "bad"
    bad_adapter.mkdir()
    (bad_adapter / "manifest.json").write_text("{not json")
    out = str(tmp_path / "out")
    cases = [
        ["transfer"],
        ["transfer", "bogus"],
        ["transfer", "apply", "--adapter", "a", "--to", "b", "--out", out, "--lambdas", "-1"],
        ["transfer", "apply", "--adapter", "a", "--to", "b", "--out", out, "--lambdas", "nan"],
        ["transfer", "apply", "--adapter", str(tmp_path / "missing"), "--to", "efficientnet_lite0@48", "--out", out],
        ["transfer", "apply", "--adapter", "a"],
        ["transfer", "apply", "--adapter", "a", "--to", "b", "--out", out, "--protocol", "test"],
        ["transfer", "refine", "--adapter", str(bad_adapter), "--out", out],
        ["transfer", "refine", "--adapter", "a", "--out", out, "--lr", "0"],
        ["transfer", "refine", "--adapter", "a", "--out", out, "--epochs", "-3"],
        ["transfer", "evaluate", "--adapter", str(bad_adapter)],
        ["transfer", "evaluate", "--adapter", "a", "--blend", "2"],
        ["transfer", "evaluate", "--adapter", "a", "--bogus"],
        ["transfer", "extract", "--out", out, "--shots", "0"],
        ["transfer", "extract", "--out", out, "--views", "9"],
        ["transfer", "extract", "--out", out, "--num-align", "5000"],
        ["transfer", "extract", "--out", out, "--shots", "30"],
        ["transfer", "extract", "--out", out, "--base", "NotAClass"],
        ["transfer", "extract", "--out", out, "--base", "Trouser", "Trouser"],
        ["transfer", "extract", "--out", out, "--task", "no-such-task"],
        ["transfer", "extract", "--out", out, "--consistency", "-1"],
        ["transfer", "extract", "--recipe"],
        ["transfer", "extract", "--recipe", str(tmp_path / "missing.yaml")],
    ]
    for argv in cases:
        code, stdout, stderr = _cli(argv, capsys)
        assert code == 2, (argv, code, stderr)
        assert "vimw: error:" in stderr, (argv, stderr)
        assert "Traceback" not in stderr + stdout, argv


@pytest.mark.slow
def test_cli_extract_apply_refine_evaluate_chain(tmp_path, capsys):
    from vimw.transfer import load_adapter

    cache = str(tmp_path / "cache")
    data = ["--task", "fmnist", "--base", "Trouser", "Bag", "--shots", "2", "--val-per-class", "2",
            "--pool-per-class", "4", "--num-unlabeled", "24", "--num-align", "4", "--num-calibration", "8",
            "--num-test", "20", "-K", "24", "--views", "2"]
    src, dst, plus = tmp_path / "src", tmp_path / "dst", tmp_path / "plus"
    code, _, err = _cli(["transfer", "extract", "--weak", "efficientnet_lite0@40+invert", "--finetuned", "convpass",
                         "--epochs", "1", "--extraction-epochs", "1", "--out", str(src), "--cache", cache, *data], capsys)
    assert code == 0, err
    adapter, manifest = load_adapter(src)
    assert adapter.num_logits == 24 and adapter.num_classes == 10 and manifest["aux_words_sha256"]
    assert manifest["settings"]["data"]["base"] == ["Trouser", "Bag"]
    assert manifest["settings"]["extraction"]["rows"] == 8  # the base shots' images: 2 classes x 2 shots x 2 views
    code, stdout, err = _cli(["transfer", "apply", "--adapter", str(src), "--to", "efficientnet_lite0@48",
                              "--lambdas", "1", "10", "--out", str(dst)], capsys)
    assert code == 0, err
    assert "lambda/image 1:" in stdout and "lambda/image 10:" in stdout
    moved, moved_manifest = load_adapter(dst)
    assert moved.rotation is not None
    assert moved_manifest["target_model"].startswith("imagenet-text-head/efficientnet_lite0@48")
    assert moved_manifest["settings"]["apply"]["rows"] == 2 * (2 * 2 + 4)  # (shots of 2 classes + 4) x 2 views
    code, _, err = _cli(["transfer", "refine", "--adapter", str(dst), "--epochs", "1", "--lr", "1e-3",
                         "--out", str(plus)], capsys)
    assert code == 0, err
    code, stdout, err = _cli(["transfer", "evaluate", "--adapter", str(plus), "--json", "--blend", "auto"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["transferred"] and result["test_images"] == 20 and 0.0 <= result["alpha"] <= 1.0
    assert len(result["alpha_candidates"]) == 11
    assert set(result["scores"]["adapter"]) == {"base", "novel", "hm"}
    # a teacher saved by the first extract is reused as is (the file format round-trips)
    code, _, err = _cli(["transfer", "extract", "--weak", "efficientnet_lite0@40+invert", "--finetuned",
                         str(src / "teacher"), "--extraction-epochs", "1", "--out", str(tmp_path / "src2"),
                         "--cache", cache, *data], capsys)
    assert code == 0, err
    code, _, err = _cli(["transfer", "extract", "--weak", "efficientnet_lite0@40+invert", "--finetuned",
                         "no-such-kind", "--out", str(tmp_path / "src3"), "--cache", cache, *data], capsys)
    assert code == 2 and "vimw: error:" in err and "Traceback" not in err


def test_vim_chain_plugin_trains_only_the_gates(tiny_zoo, lite0):
    """The teacher as a ViM aggregation over a zoo: only the gates train, text rows stay frozen."""
    from vimw.aggregation.aggregate import ZooAggregate
    from vimw.transfer.teacher import make_plugin

    plugin, info = make_plugin(lite0, tiny_zoo.root)
    assert isinstance(plugin, ZooAggregate) and info["plugin"] == "zoo-ens" and info["modules"]
    model = FineTunedZeroShot(_FakeHead(lite0, 3), ["a", "b", "c"], plugin)
    trainable = model.trainable_parameters()
    assert len(trainable) == 1 and trainable[0] is plugin.gate_logits
    gates_before = plugin.gate_logits.detach().clone()
    experts_before = {k: v.clone() for k, v in plugin.experts.state_dict().items()}
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0, 1] * 4)
    rows = model.rows.clone()
    F.cross_entropy(model(images)[:, :2], labels).backward()
    torch.optim.SGD(trainable, lr=10.0).step()
    assert not torch.equal(plugin.gate_logits.detach(), gates_before)
    assert torch.equal(model.rows, rows)
    for key, value in plugin.experts.state_dict().items():
        assert torch.equal(value, experts_before[key]), key


# -- one home for the defaults, and the command line that reads them -----------------------------------
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
RECIPE = "recipes/default.yaml"
PATH_KEYS = ("out", "adapter", "cache")  # where a recipe reads and writes, not a setting


def _without_paths(section: dict) -> dict:
    return {k: (_without_paths(v) if isinstance(v, dict) else v) for k, v in section.items() if k not in PATH_KEYS}


def test_the_built_in_recipe_transfer_section_equals_the_settings_defaults():
    from vimw.recipes import load_recipe
    from vimw.transfer.settings import TransferSettings

    recipe = load_recipe(REPO / RECIPE)["transfer"]
    assert _without_paths(recipe) == _without_paths(TransferSettings().to_section())


def _effective(argv: list[str]):
    from vimw.cli.main import build_parser
    from vimw.cli.transfer import effective_transfer

    args = build_parser(argv).parse_args(argv)
    return effective_transfer(args, argv[1])


@pytest.mark.parametrize("step", ["extract", "apply", "refine", "evaluate"])
def test_the_built_in_recipe_runs_every_step_with_the_default_settings(step, monkeypatch):
    """`vimw transfer STEP --recipe recipes/default.yaml` on a fresh clone: vimw's defaults, the recipe's paths."""
    from vimw.recipes import load_recipe
    from vimw.transfer.settings import TransferSettings

    monkeypatch.chdir(REPO)
    recipe, options, settings = _effective(["transfer", step, "--recipe", RECIPE])
    assert settings == TransferSettings()
    section = load_recipe(RECIPE)["transfer"]
    expected = section if step == "extract" else section[step]
    assert {k: options.get(k) for k in ("out", "adapter")} == {k: expected.get(k) for k in ("out", "adapter")}
    assert recipe["transfer"]["weak"] == TransferSettings().weak  # the whole effective recipe is kept


def test_flags_win_over_the_recipe_and_the_recipe_over_the_defaults(tmp_path, monkeypatch):
    from vimw.transfer.settings import TransferSettings

    monkeypatch.chdir(REPO)
    _, options, s = _effective(["transfer", "apply", "--recipe", RECIPE, "--to", "efficientnet_lite1@64",
                                "--lambdas", "1", "--out", str(tmp_path / "x")])
    assert (s.strong, s.lambdas, options["out"]) == ("efficientnet_lite1@64", (1.0,), str(tmp_path / "x"))
    assert options["adapter"] == "runs/recipe/transfer/weak" and s.protocol == TransferSettings().protocol
    mine = tmp_path / "mine.yaml"
    mine.write_text("transfer:\n  shots: 4\n  base: [Trouser, Bag]\n  evaluate: {blend: auto, adapter: a}\n")
    _, _, s = _effective(["transfer", "extract", "--recipe", str(mine), "--out", "o", "--num-test", "50"])
    assert (s.data.shots, s.data.base, s.data.num_test) == (4, ("Trouser", "Bag"), 50)
    assert s.data.val_per_class == TransferSettings().data.val_per_class
    _, options, s = _effective(["transfer", "evaluate", "--recipe", str(mine)])
    assert s.blend is None and options["adapter"] == "a"


def test_a_bad_recipe_value_or_a_missing_path_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    for body, message in (("transfer:\n  shots: many\n", "transfer.shots: expected int"),
                          ("transfer:\n  shots: 0\n", "shots must be a positive integer"),
                          ("transfer:\n  bogus: 1\n", "unknown option 'bogus'"),
                          ("transfer:\n  apply: {protocol: test}\n", "protocol must be one of")):
        bad.write_text(body)
        step = "apply" if "apply" in body else "extract"
        code, _, err = _cli(["transfer", step, "--recipe", str(bad), "--adapter", "a", "--out", "o"]
                            if step == "apply" else ["transfer", step, "--recipe", str(bad), "--out", "o"], capsys)
        assert code == 2 and message in err and "Traceback" not in err, (body, err)
    code, _, err = _cli(["transfer", "extract"], capsys)
    assert code == 2 and "needs --out (or transfer.out in the recipe)" in err
    code, _, err = _cli(["transfer", "refine", "--adapter", "a"], capsys)
    assert code == 2 and "needs --out (or transfer.refine.out in the recipe)" in err


def test_every_step_documents_recipe_and_protocol_in_its_help(capsys):
    for step in ("extract", "apply", "refine", "evaluate"):
        code, stdout, _ = _cli(["transfer", step, "--help"], capsys)
        assert code == 0 and "--recipe" in stdout and "--protocol" in stdout, step


def test_a_missing_zoo_as_the_plugin_is_named_before_any_work(tmp_path, capsys, lite0):
    from vimw.errors import VimwError
    from vimw.transfer.teacher import make_plugin

    missing = tmp_path / "runs" / "demo" / "zoo"
    with pytest.raises(VimwError, match=f"the zoo directory {missing} does not exist"):
        make_plugin(lite0, missing)
    code, _, err = _cli(["transfer", "extract", "--finetuned", str(missing), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and f"the zoo directory {missing} does not exist" in err
    assert not (tmp_path / "o").exists()


def test_the_base_classes_default_to_the_first_half_of_any_task(tmp_path):
    from conftest import write_image_folder

    from vimw.transfer.data import DataConfig, base_classes, make_sets, seed_split

    assert base_classes(["a", "b", "c", "d", "e"], ()) == ("a", "b")
    assert base_classes(["a", "b", "c"], ("c",)) == ("c",)
    with pytest.raises(DataError, match="proper subset"):
        base_classes(["a"], ())
    root = write_image_folder(tmp_path / "photos", per_class=12, classes=4)
    data = DataConfig(task=f"folder:{root}", shots=2, val_per_class=2, pool_per_class=4, num_unlabeled=8,
                      num_calibration=4, num_test=8, K=8)
    sets = make_sets(data)
    assert sets.split_names() == {"base": ["kind0", "kind1"], "novel": ["kind2", "kind3"]}
    split = seed_split(sets, 0)
    assert len(split.train) == 2 * 2 and len(split.val) == 4 * 2
    assert set(sets.pool_labels[split.train].tolist()) <= {0, 1} and len(split.base_val) == 2 * 2
    again = seed_split(sets, 0)
    assert torch.equal(again.train, split.train) and torch.equal(again.val, split.val)


@pytest.mark.slow
def test_every_step_takes_any_base_classes_of_any_task_a_folder_too(tmp_path, capsys):
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "photos", per_class=14, classes=4)
    cache = str(tmp_path / "cache")
    data = ["--task", f"folder:{root}", "--base", "kind3", "kind1", "--shots", "2", "--val-per-class", "2",
            "--pool-per-class", "4", "--num-unlabeled", "8", "--num-calibration", "4", "--num-test", "8", "-K", "8",
            "--views", "1", "--align-views", "2", "--extraction", "shots"]
    src, dst, plus = tmp_path / "src", tmp_path / "dst", tmp_path / "plus"
    code, _, err = _cli(["transfer", "extract", "--weak", "efficientnet_lite0@40", "--epochs", "1",
                         "--extraction-epochs", "1", "--out", str(src), "--cache", cache, *data], capsys)
    assert code == 0, err
    code, _, err = _cli(["transfer", "apply", "--adapter", str(src), "--to", "efficientnet_lite0@48", "--lambdas", "1",
                         "--out", str(dst)], capsys)
    assert code == 0, err
    code, _, err = _cli(["transfer", "refine", "--adapter", str(dst), "--epochs", "1", "--distill", "1",
                         "--out", str(plus)], capsys)
    assert code == 0, err
    code, stdout, err = _cli(["transfer", "evaluate", "--adapter", str(plus), "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert (result["base_classes"], result["novel_classes"]) == (["kind3", "kind1"], ["kind0", "kind2"])
    from vimw.transfer import load_adapter

    manifest = load_adapter(plus)[1]["settings"]
    assert manifest["data"]["base"] == ["kind3", "kind1"] and manifest["data"]["extraction"] == "shots"
    assert manifest["apply"]["rows"] == 2 * 2 * 2  # 2 base classes x 2 shots x 2 alignment views
    assert manifest["refine"]["config"]["distill"] == 1.0
    code, _, err = _cli(["transfer", "extract", "--out", str(tmp_path / "bad"), *data[:2], "--base", "kind9"], capsys)
    assert code == 2 and "kind9" in err and not (tmp_path / "bad").exists()


def test_the_zero_shot_loader_reads_the_one_model_name_grammar():
    from vimw.errors import RegistryError, VimwError
    from vimw.transfer import load_zero_shot

    head = load_zero_shot("efficientnet_lite0@40+invert")
    assert (head.backbone_name, head.image_size, head.invert) == ("efficientnet_lite0", 40, True)
    assert head.name == "imagenet-text-head/efficientnet_lite0@40/inverted"
    with pytest.raises(RegistryError, match="at least 16"):
        load_zero_shot("efficientnet_lite0@8+invert")
    with pytest.raises(VimwError, match="not of a CLIP model"):
        load_zero_shot("hf:openai/clip-vit-base-patch16+invert")


def test_the_package_exports_the_user_steps_and_not_internals():
    import vimw.transfer as transfer

    for name in ("extract_step", "apply_step", "refine_step", "evaluate_step", "TransferSettings", "DataConfig",
                 "TeacherConfig", "ExtractionConfig", "RefineConfig", "load_adapter", "save_adapter", "load_teacher",
                 "load_zero_shot", "base_novel_scores", "demo_step"):
        assert name in transfer.__all__ and getattr(transfer, name) is not None, name
    for internal in ("kd_loss", "random_orthogonal", "standardize", "orthogonal_alignment"):
        assert internal not in transfer.__all__, internal


@pytest.mark.parametrize("bad", ["-1", "nan"])
def test_every_numeric_option_of_every_step_refuses_out_of_range_values_in_one_line(bad, capsys, tmp_path):
    from vimw.cli.main import build_parser

    transfer = next(a for a in build_parser(["transfer"])._actions if a.dest == "command").choices["transfer"]
    steps = next(a for a in transfer._actions if a.dest == "transfer_command").choices
    checked = 0
    for step, parser in steps.items():
        for action in parser._actions:
            if action.type is None or not action.option_strings:
                continue
            argv = ["transfer", step, action.option_strings[-1], bad, "--adapter", "a", "--out", str(tmp_path / "o")]
            code, stdout, err = _cli(argv if step != "extract" else [a for a in argv if a not in ("--adapter", "a")],
                                     capsys)
            assert code == 2 and err.count("\n") == 1 and "vimw: error: argument" in err, (step, action.dest, err)
            checked += 1
    assert checked >= 19  # every count, seed, rate, weight, lambda and the blend


def test_the_demo_announces_each_transfer_stage_once_as_it_ends():
    from vimw.transfer.demo import STAGES, stage_announcer

    said: list[str] = []
    log = stage_announcer(said.append)
    for protocol in ("all  ", "base "):
        for method, seconds in (("teacher", 15.0), ("transferred", 6.8), ("transferred_blend", 6.8),
                                ("transmiter_plus", 8.7)):
            log(f"  seed 0 [{protocol}] {method:30s} base 0.8 novel 0.4 HM 0.5 ({seconds} s)")
    log("  weak zero-shot logits (imagenet-text-head/efficientnet_lite0@96): 12.3 s (0 when cached)")
    log("  a line the demo does not repeat")
    assert said == [f"  {STAGES['teacher']} (15 s)", f"  {STAGES['transferred']} (7 s)",
                    f"  {STAGES['transmiter_plus']} (9 s)",
                    "  the weak model's zero-shot logits over the image sets (12 s, cached for the next run)"]

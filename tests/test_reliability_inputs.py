"""Bad inputs end in a clear VimwError, never a crash deep in torch, and write nothing.

Images of random sizes and modes (1-bit, grey, grey+alpha, palette, 16-bit, float,
RGB, RGBA, CMYK; 1x1 up to 4000x3000) through the image-folder loader and
``Preprocess``; random tensors (any rank, dtype, size, NaN/Inf) through ``Preprocess``;
corrupt image files; empty datasets; downstream models whose class count, zoo modules
or backbone do not match.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers.reliability import listing, pattern_npz, report_counts
from vimw.aggregation.store import load_downstream, save_downstream
from vimw.methods import build_model
from vimw.backbones import create_backbone
from vimw.backbones.base import Preprocess
from vimw.cli.main import main
from vimw.data import ImageSet, load_image_folder, load_npz, load_task
from vimw.errors import BackboneMismatchError, DataError, FormatError, IntegrityError, VimwError
from vimw.modules import ConvpassConfig, ModuleSet
from vimw.training import TaskModel, TrainConfig, fit, head_config_for
from vimw.zoo import ModuleManifest, Zoo

COUNTS = {"bad inputs (hypothesis)": 0, "bad inputs (fixed cases)": 0}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
PREPROCESS = Preprocess(size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
# PIL mode -> file format able to hold it
MODES = {"1": "png", "L": "png", "LA": "png", "P": "png", "I;16": "png", "RGB": "png", "RGBA": "png",
         "I": "tiff", "F": "tiff", "CMYK": "tiff", "YCbCr": "jpeg"}


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    report_counts(request.config, "inputs", COUNTS)


@pytest.fixture(scope="module")
def backbone():
    torch.set_num_threads(1)
    return create_backbone("efficientnet_lite0", image_size=40)


def _image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "RGB")
    if mode in ("I;16", "I", "F"):
        return rgb.convert("L").convert(mode)
    return rgb.convert(mode)


@SETTINGS
@given(
    files=st.lists(
        st.tuples(st.sampled_from(sorted(MODES)), st.integers(1, 48), st.integers(1, 48)), min_size=1, max_size=4
    ),
    image_size=st.integers(1, 40),
    seed=st.integers(0, 1000),
)
def test_image_folders_of_any_mode_and_size_load_and_preprocess(tmp_path_factory, files, image_size, seed):
    COUNTS["bad inputs (hypothesis)"] += 1
    root = tmp_path_factory.mktemp("folder")
    for i, (mode, width, height) in enumerate(files):
        directory = root / f"class{i % 2}"
        directory.mkdir(exist_ok=True)
        _image(mode, width, height, seed + i).save(directory / f"img{i}.{MODES[mode]}")
    before = listing(root)
    images = load_image_folder(root, image_size=image_size)
    assert images.images.dtype == torch.uint8 and images.images.shape[1] in (1, 3)
    assert tuple(images.images.shape[2:]) == (image_size, image_size) and len(images) == len(files)
    pixels = PREPROCESS(images.images)
    assert pixels.shape == (len(files), 3, 16, 16) and torch.isfinite(pixels).all()
    assert listing(root) == before


def test_a_very_large_image(tmp_path):
    (tmp_path / "big").mkdir()
    _image("RGB", 4000, 3000, 0).save(tmp_path / "big" / "photo.png")
    images = load_image_folder(tmp_path, image_size=32)
    assert tuple(images.images.shape) == (1, 3, 32, 32)
    pixels = PREPROCESS(torch.zeros(1, 3, 3000, 4000, dtype=torch.uint8))
    assert pixels.shape == (1, 3, 16, 16)
    COUNTS["bad inputs (fixed cases)"] += 2


@SETTINGS
@given(
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=5),
    dtype=st.sampled_from([torch.uint8, torch.float32, torch.float16, torch.float64, torch.int32, torch.int64,
                           torch.bool, torch.complex64]),
    poison=st.sampled_from([None, float("nan"), float("inf"), float("-inf")]),
)
def test_preprocess_takes_any_tensor_or_says_what_is_wrong(shape, dtype, poison):
    COUNTS["bad inputs (hypothesis)"] += 1
    images = torch.zeros(shape, dtype=dtype)
    poisoned = poison is not None and dtype.is_floating_point and images.numel() > 0
    if poisoned:
        images.view(-1)[-1] = poison
    try:
        pixels = PREPROCESS(images)
    except DataError as exc:
        assert "images" in str(exc) or "image" in str(exc)
        return
    assert pixels.shape[1:] == (3, 16, 16) and torch.isfinite(pixels).all()
    assert dtype in (torch.uint8, torch.float32, torch.float16, torch.float64) and not poisoned


@SETTINGS
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".png", ".jpg", ".tiff", ".bmp", ".gif"]),
       truncate=st.booleans())
def test_corrupt_image_files_are_named(tmp_path_factory, data, suffix, truncate):
    COUNTS["bad inputs (hypothesis)"] += 1
    root = tmp_path_factory.mktemp("corrupt")
    (root / "a").mkdir()
    path = root / "a" / f"bad{suffix}"
    if truncate:  # a real image cut short
        _image("RGB", 20, 20, 0).save(path, format={"jpg": "jpeg", "tiff": "tiff"}.get(suffix[1:], suffix[1:]))
        path.write_bytes(path.read_bytes()[: max(1, len(data))])
    else:
        path.write_bytes(data)
    before = listing(root)
    try:
        images = load_image_folder(root, image_size=8)
    except DataError as exc:
        assert str(path) in str(exc)
    else:  # some prefixes still decode (e.g. a complete header and PIL's lenient decoders)
        assert images.images.shape == (1, images.images.shape[1], 8, 8)
    assert listing(root) == before


def test_empty_datasets(tmp_path):
    cases = 0
    with pytest.raises(DataError, match="no class sub-folders"):
        load_image_folder(tmp_path)
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match="cats contains no images"):
        load_image_folder(tmp_path)
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 8, 8), np.uint8), labels=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="holds no images"):
        load_npz(tmp_path / "empty.npz")
    np.savez(tmp_path / "one.npz", images=np.zeros((2, 8, 8), np.uint8), labels=np.arange(2))
    with pytest.raises(DataError, match="split is empty|needs at least"):
        load_task(f"npz:{tmp_path / 'one.npz'}")
    with pytest.raises(DataError):
        ImageSet(torch.zeros(0, 1, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), ())
    np.savez(tmp_path / "nan.npz", images=np.full((4, 8, 8), np.nan, np.float32), labels=np.arange(4))
    with pytest.raises(DataError, match="NaN or infinite"):
        load_npz(tmp_path / "nan.npz")
    np.savez(tmp_path / "objects.npz", images=np.array([object()] * 2), labels=np.arange(2))
    with pytest.raises(FormatError, match="pickle"):
        load_npz(tmp_path / "objects.npz")
    cases += 7
    COUNTS["bad inputs (fixed cases)"] += cases


def test_training_on_an_empty_split_says_so(tmp_path, backbone):
    data = load_task(f"npz:{pattern_npz(tmp_path / 't.npz', n_per_class=8)}")
    empty = data.train.subset([], name="t/train")
    data.train = empty
    model = TaskModel(backbone, head_config_for(backbone, data.kind, data.num_classes))
    before = listing(tmp_path)
    with pytest.raises(DataError, match="training split is empty"):
        fit(model, data, TrainConfig(epochs=1), checkpoint_dir=tmp_path / "ck")
    assert listing(tmp_path) == before
    COUNTS["bad inputs (fixed cases)"] += 1


# -- downstream models ---------------------------------------------------------------------
def _zoo_for(backbone, root: Path, names=("a", "b")) -> Zoo:
    zoo = Zoo(root)
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        module = ModuleSet.create(ConvpassConfig(hidden_dim=2), backbone.sites)
        zoo.add(ModuleManifest(name=name, module=module.config.to_dict(),
                               backbone={"arch": backbone.arch, "fingerprint": backbone.fingerprint(), "image_size": 40},
                               task={"name": "t"}, weights={}), module)
    return zoo


def test_downstream_models_refuse_changed_or_missing_zoo_modules(tmp_path, backbone):
    zoo = _zoo_for(backbone, tmp_path / "zoo")
    data = load_task(f"npz:{pattern_npz(tmp_path / 't.npz', n_per_class=8)}")
    model, info = build_model("ens", backbone, data, zoo=zoo)
    out = tmp_path / "model"
    save_downstream(out, model, {"method": "ens", **info, "task": data.spec.to_dict(),
                                 "class_names": list(data.class_names)})
    loaded, _ = load_downstream(out, backbone=backbone)
    assert list(loaded.plugin.names) == ["a", "b"]
    # A module retrained (same name, new weights): refused, naming it.
    torch.manual_seed(99)
    module = ModuleSet.create(ConvpassConfig(hidden_dim=2), backbone.sites)
    with torch.no_grad():
        next(module.parameters()).add_(1.0)
    zoo.add(ModuleManifest(name="a", module=module.config.to_dict(),
                           backbone={"arch": backbone.arch, "fingerprint": backbone.fingerprint()},
                           task={"name": "t"}, weights={}), module, overwrite=True)
    with pytest.raises(IntegrityError, match=r"changed since the model was trained \(sha256 differs\): \['a'\]"):
        load_downstream(out, backbone=backbone)
    zoo.remove("b")
    with pytest.raises(IntegrityError, match=r"missing from the zoo: \['b'\].*\['a'\]"):
        load_downstream(out, backbone=backbone)
    other = create_backbone("efficientnet_lite0", image_size=40, pretrained=False)
    with pytest.raises(BackboneMismatchError, match="trained on efficientnet_lite0"):
        load_downstream(out, backbone=other)
    COUNTS["bad inputs (fixed cases)"] += 3


def test_class_count_mismatch_is_named(tmp_path, backbone, capsys):
    two = load_task(f"npz:{pattern_npz(tmp_path / 'two.npz', n_per_class=6, classes=2)}")
    three = pattern_npz(tmp_path / "three.npz", n_per_class=6, classes=3)
    model = TaskModel(backbone, head_config_for(backbone, two.kind, two.num_classes))
    out = tmp_path / "probe"
    save_downstream(out, model, {"method": "linear_probe", "task": two.spec.to_dict(), "class_names": ["0", "1"]})
    before = listing(tmp_path)
    assert main(["evaluate", "--model", str(out), "--task", f"npz:{three}"]) == 2
    assert "has 3 classes but the model predicts 2" in capsys.readouterr().err
    # Head weights for another class count than the manifest says: refused on load.
    manifest = (out / "manifest.json").read_text().replace('"num_classes": 2', '"num_classes": 3')
    (out / "manifest.json").write_text(manifest)
    with pytest.raises(FormatError, match="head weights do not match"):
        load_downstream(out, backbone=backbone)
    shutil.rmtree(out)
    assert listing(tmp_path) == [row for row in before if not row[0].startswith("probe")]
    COUNTS["bad inputs (fixed cases)"] += 2


@pytest.mark.parametrize("corrupt", ["truncate", "newer", "no-gates"])
def test_corrupt_downstream_model_files(tmp_path, backbone, corrupt):
    zoo = _zoo_for(backbone, tmp_path / "zoo")
    data = load_task(f"npz:{pattern_npz(tmp_path / 't.npz', n_per_class=8)}")
    model, info = build_model("ens", backbone, data, zoo=zoo)
    out = tmp_path / "model"
    save_downstream(out, model, {"method": "ens", **info})
    if corrupt == "truncate":
        path = out / "model.safetensors"
        path.write_bytes(path.read_bytes()[:50])
    elif corrupt == "newer":
        (out / "manifest.json").write_text((out / "manifest.json").read_text().replace('"format": 1', '"format": 7'))
    else:
        from vimw.io import read_json, save_tensors, write_json, load_tensors

        tensors = load_tensors(out / "model.safetensors")
        tensors.pop("gate_logits")
        manifest = read_json(out / "manifest.json")
        manifest["weights"]["sha256"] = save_tensors(out / "model.safetensors", tensors)
        write_json(out / "manifest.json", manifest)
    before = listing(tmp_path)
    with pytest.raises(VimwError, match=str(out)):
        load_downstream(out, backbone=backbone)
    assert listing(tmp_path) == before
    COUNTS["bad inputs (fixed cases)"] += 1

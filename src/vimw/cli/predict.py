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
    import torch

    from vimw.data import read_image

    if args.model:
        from vimw.aggregation import load_downstream

        model, manifest = load_downstream(args.model, zoo_dir=args.zoo)
        class_names = manifest.get("class_names") or [str(i) for i in range(model.head_config.num_classes)]
        preprocess = model.backbone.preprocess

        def logits_of(pixels):
            return model(pixels)
    else:
        from vimw.backbones import create_backbone

        backbone = create_backbone(args.backbone)
        class_names = backbone.class_names
        preprocess = backbone.preprocess

        def logits_of(pixels):
            return backbone.classify(backbone(pixels))

    for path in args.images:
        image = read_image(Path(path), preprocess.size)
        with torch.inference_mode():
            probabilities = logits_of(preprocess(image.unsqueeze(0))).softmax(-1)[0]
        top = probabilities.topk(min(args.top, len(probabilities)))
        print(path)
        for p, index in zip(top.values.tolist(), top.indices.tolist()):
            print(f"  {p:6.3f}  {index:4d}  {class_names[index]}")
    return 0

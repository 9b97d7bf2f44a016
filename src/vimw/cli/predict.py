"""``vimw predict``: top-5 classes for image files, from a backbone's own head or a downstream model."""

from __future__ import annotations


def register(commands) -> None:
    parser = commands.add_parser("predict", help="print the top-5 classes of images")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--backbone", default="efficientnet_lite0", help="use this backbone's ImageNet classifier")
    source.add_argument("--model", help="a downstream model directory (from 'vimw aggregate')")
    parser.add_argument("--zoo", help="zoo directory for --model, if it moved since training")
    parser.add_argument("--top", type=int, default=5, help="classes printed per image (default 5)")
    parser.set_defaults(handler=run)


def print_predictions(predictions) -> None:
    """Each image's path, then one line per class: probability, index, name."""
    for row in predictions:
        print(row.source)
        for p, index, name in row.classes:
            print(f"  {p:6.3f}  {index:4d}  {name}")


def run(args) -> int:
    from vimw.workflows.predict import check_top, load_predictor, predict_files

    check_top(args.top)
    predictor = load_predictor(model=args.model, backbone=args.backbone, zoo=args.zoo)
    predictions, _ = predict_files(args.images, predictor, top=args.top)
    print_predictions(predictions)
    return 0

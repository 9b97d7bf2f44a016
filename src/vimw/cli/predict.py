"""``vimw predict``: top-5 classes for image files, from a backbone's own head or a downstream model."""

from __future__ import annotations


def register(commands) -> None:
    from vimw.cli.options import positive_int

    parser = commands.add_parser("predict", help="print the top-5 classes of images")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--backbone", default="efficientnet_lite0", help="use this backbone's ImageNet classifier")
    source.add_argument("--model", help="a downstream model directory (from 'vimw aggregate')")
    parser.add_argument("--zoo", help="zoo directory for --model, if it moved since training")
    parser.add_argument("--top", type=positive_int, default=5, help="classes printed per image (default 5)")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave out files that cannot be read as images (saying which) instead of stopping")
    parser.set_defaults(handler=run)


def run(args) -> int:
    import sys

    from vimw.workflows.predict import format_predictions, load_predictor, predict_files

    predictor = load_predictor(model=args.model, backbone=args.backbone, zoo=args.zoo)
    predictions, skipped = predict_files(args.images, predictor, top=args.top, skip_bad=args.skip_bad_images)
    if predictions:
        print(format_predictions(predictions))
    for path, why in skipped:
        print(f"vimw: skipped {path}: {why}", file=sys.stderr)
    return 0

"""``vimw predict``: top-5 classes for image files, from a backbone's own head or a downstream model."""

from __future__ import annotations


def register(commands) -> None:
    from vimw.cli.options import SKIP_BAD_HELP, positive_int, zoo_to_read

    parser = commands.add_parser("predict", help="print the top-5 classes of images")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--backbone", default="efficientnet_lite0", help="use this backbone's ImageNet classifier")
    source.add_argument("--model", help="a downstream model directory (from 'vimw aggregate')")
    parser.add_argument("--zoo", type=zoo_to_read, help="zoo directory for --model, if it moved since training")
    parser.add_argument("--top", type=positive_int, default=5, help="classes printed per image (default 5)")
    parser.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_HELP)
    parser.set_defaults(handler=run)


def run(args) -> int:
    import sys

    from vimw.data.user_data import describe_skipped
    from vimw.errors import DataError
    from vimw.workflows.predict import format_predictions, load_predictor, predict_files

    predictor = load_predictor(model=args.model, backbone=args.backbone, zoo=args.zoo)
    predictions, skipped = predict_files(args.images, predictor, top=args.top, skip_bad=args.skip_bad_images)
    if not predictions:
        raise DataError(f"none of the {len(args.images)} file(s) could be read as an image "
                        f"({describe_skipped(skipped)})")
    print(format_predictions(predictions))
    if skipped:
        print(f"vimw: {describe_skipped(skipped)}", file=sys.stderr)
    return 0

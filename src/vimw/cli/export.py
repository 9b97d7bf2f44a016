"""``vimw export``: fold a LoRA downstream model into a plain backbone and write one file."""

from __future__ import annotations

import json


def register(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="fold a lora downstream model into the backbone's weights and write it as one safetensors file",
    )
    parser.add_argument("--model", required=True, help="downstream model directory (from 'vimw aggregate')")
    parser.add_argument("--out", required=True, help="file to write (.safetensors); a FILE.json manifest goes next to it")
    parser.add_argument("--zoo", help="zoo directory, if it moved since training")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from vimw.aggregation.fold import export_folded

    payload = export_folded(args.model, args.out, zoo_dir=args.zoo)
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(f"wrote {args.out}: {payload['arch']} at {payload['image_size']} px with the LoRA zoo folded in "
              f"(sha256 {payload['sha256'][:12]}); load it with vimw.aggregation.fold.load_exported")
    return 0

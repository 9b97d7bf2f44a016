"""``vimw export``: a downstream model as one file, folded (safetensors) or for other runtimes (ONNX)."""

from __future__ import annotations

import json


def register(commands) -> None:
    from vimw.cli.options import zoo_to_read

    parser = commands.add_parser(
        "export",
        help="write a downstream model as one file: lora folded into the backbone (safetensors) or ONNX",
    )
    parser.add_argument("--model", required=True, help="downstream model directory (from 'vimw aggregate')")
    parser.add_argument("--out", required=True,
                        help="file to write (.safetensors or .onnx); a FILE.json manifest goes next to it")
    parser.add_argument("--overwrite", action="store_true", help="replace FILE (and FILE.json) if they exist")
    parser.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors",
                        help="safetensors: a lora model folded into the backbone's weights (vimw loads it); "
                             "onnx: backbone + plug-in + head for onnxruntime and other runtimes, lora folded, "
                             "other plug-ins exported as the gated graph (default: safetensors)")
    parser.add_argument("--exporter", choices=("auto", "torchscript", "dynamo"), default="auto",
                        help="ONNX exporter of torch (default auto: the TorchScript tracer, else torch.export)")
    parser.add_argument("--zoo", type=zoo_to_read, help="zoo directory, if it moved since training")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    parser.set_defaults(handler=run)


def run(args) -> int:
    if args.format == "onnx":
        from vimw.deploy.onnx import export_onnx

        payload = export_onnx(args.model, args.out, zoo_dir=args.zoo, exporter=args.exporter, overwrite=args.overwrite)
        if args.json:
            print(json.dumps(payload, indent=2))
        else:
            size = payload["preprocess"]["size"]
            print(f"wrote {args.out}: {payload['arch']} ({payload['kind']}) as ONNX via {payload['exporter']}; "
                  f"input 'images' N x 3 x {size} x {size} RGB in [0, 1], output 'logits'; "
                  f"onnxruntime matches vimw to {payload['max_abs_diff']:.1e}")
        return 0

    from vimw.aggregation.fold import export_folded

    payload = export_folded(args.model, args.out, zoo_dir=args.zoo, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(f"wrote {args.out}: {payload['arch']} at {payload['image_size']} px with the LoRA zoo folded in "
              f"(sha256 {payload['sha256'][:12]}); load it with vimw.aggregation.fold.load_exported")
    return 0

"""``vimw serve``: one backbone, many downstream models, one HTTP server (extra ``serve``)."""

from __future__ import annotations

import argparse
import re

from vimw.serve.defaults import (DEFAULT_DEVICE, DEFAULT_HOST, DEFAULT_MAX_BATCH, DEFAULT_MAX_UPLOAD_MB,
                                 DEFAULT_MAX_WAIT_MS, DEFAULT_PORT, DEVICE_PATTERN, FOLD_POLICIES)


def device_name(text: str) -> str:
    """``--device``'s spelling, checked at parse time (whether the GPU exists is checked at start)."""
    if not re.fullmatch(DEVICE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def register(commands) -> None:
    from vimw.cli.options import nonneg_float, number, positive_float, positive_int

    parser = commands.add_parser(
        "serve", help="serve downstream models over HTTP, batching requests for different models together")
    parser.add_argument("--models", nargs="*", default=[], metavar="[NAME=]DIR",
                        help="downstream model directories (from 'vimw aggregate'); the name defaults to the "
                             "directory's; more can be added while serving (POST /v1/models)")
    parser.add_argument("--zoo", help="zoo directory for the models, if it moved since training")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=number(int, minimum=0, maximum=65535), default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: a free one)")
    parser.add_argument("--max-batch", type=positive_int, default=DEFAULT_MAX_BATCH,
                        help=f"most images per batch, and per request (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--max-wait-ms", type=nonneg_float, default=DEFAULT_MAX_WAIT_MS,
                        help="longest a request waits for others on their way to join its batch "
                             f"(default {DEFAULT_MAX_WAIT_MS:g})")
    parser.add_argument("--max-upload-mb", type=positive_float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest request body in MiB (default {DEFAULT_MAX_UPLOAD_MB:g})")
    parser.add_argument("--fold", choices=FOLD_POLICIES, default="auto",
                        help="LoRA models: their own folded backbone copy where it measures faster (auto), "
                             "never, or always (default auto)")
    parser.add_argument("--device", type=device_name, default=DEFAULT_DEVICE,
                        help="where the backbone, plug-ins and heads run: cpu, cuda or cuda:N; images go there per "
                             f"batch (default {DEFAULT_DEVICE})")
    parser.add_argument("--threads", type=positive_int, help="torch threads for the forward passes (default: torch's)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(handler=run)


def run(args) -> int:
    import torch

    from vimw.serve.server import bind, run as serve, start, url_of

    if args.threads:
        torch.set_num_threads(args.threads)
    service = start(args.models, zoo=args.zoo, fold=args.fold, max_batch=args.max_batch,
                    max_wait_ms=args.max_wait_ms, max_upload_bytes=int(args.max_upload_mb * 2**20),
                    device=args.device)
    sock = bind(args.host, args.port)
    for model in service.registry.describe()["models"]:
        print(f"  {model['name']}: {model['method']} on {model['backbone']['arch']}, "
              f"{len(model['classes'])} classes, {model['path']} path")
    print(f"serving {len(service.registry)} models on {url_of(sock)} ({service.registry.device}; Ctrl-C stops)",
          flush=True)
    serve(service, sock, log_level=args.log_level)
    return 0

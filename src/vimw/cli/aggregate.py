"""``vimw aggregate`` and ``vimw evaluate``: downstream models over a zoo."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(commands) -> None:
    from vimw.aggregation import METHODS
    from vimw.cli.zoo import _add_train_args

    parser = commands.add_parser("aggregate", help="learn per-site gates over a zoo + a head for a downstream task")
    parser.add_argument("--zoo", required=True, help="zoo directory")
    parser.add_argument("--task", required=True, help="task name, folder:DIR, npz:FILE, or an image folder / .npz path")
    parser.add_argument("--out", required=True, help="directory to write the downstream model to")
    parser.add_argument("--shots", type=int, help="training images per class (k-shot); default: all")
    parser.add_argument("--method", default="ens", choices=METHODS, help="aggregation mode or baseline (default ens)")
    parser.add_argument("--top-k", type=int, default=2, help="modules kept per site for --method topk")
    parser.add_argument("--modules", help="comma-separated zoo module names (default: all on this backbone)")
    parser.add_argument("--image-size", type=int, help="input resolution (default: the zoo's)")
    _add_train_args(parser)
    parser.set_defaults(handler=run_aggregate, epochs=30, lr=1e-2, batch_size=32)

    evaluate = commands.add_parser("evaluate", help="evaluate a downstream model on a task's test split")
    evaluate.add_argument("--model", required=True, help="downstream model directory")
    evaluate.add_argument("--task", help="task (default: the one the model was trained on)")
    evaluate.add_argument("--zoo", help="zoo directory, if it moved since training")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(handler=run_evaluate)


def _zoo_image_size(zoo) -> int | None:
    rows = zoo.list()
    return zoo.manifest(rows[0][0]).backbone.get("image_size") if rows else None


def run_aggregate(args) -> int:
    from vimw.aggregation import ZooAggregate, save_downstream, train_downstream
    from vimw.aggregation.plot import plot_gates
    from vimw.backbones import create_backbone
    from vimw.cli.zoo import train_config_from_args
    from vimw.data import load_task
    from vimw.errors import VimwError
    from vimw.training import evaluate
    from vimw.zoo import Zoo

    if args.method == "full_ft":  # refuse before training, not after (it is the most expensive method)
        raise VimwError("full fine-tuning is a benchmark baseline; its models are not saved")
    if not Path(args.zoo).is_dir():
        raise VimwError(f"no zoo at {args.zoo}: the directory does not exist")
    zoo = Zoo(args.zoo)
    rows = zoo.list()
    if not rows:
        raise VimwError(f"the zoo {args.zoo} is empty; build one with 'vimw zoo build --zoo {args.zoo}'")
    names = args.modules.split(",") if args.modules else None
    first = zoo.manifest((names or [rows[0][0]])[0])
    backbone = create_backbone(first.backbone["arch"], image_size=args.image_size or first.backbone.get("image_size"))
    config = train_config_from_args(args)
    data = load_task(args.task, shots=args.shots, seed=args.seed)
    result = train_downstream(args.method, backbone, data, config, zoo=zoo, names=names, top_k=args.top_k,
                              progress=False if args.no_progress else None)
    test = evaluate(result.model, data.test, config.eval_batch_size)
    out = Path(args.out)
    save_downstream(out, result.model, {
        "method": args.method,
        **result.info,
        "task": {**data.spec.to_dict(), "shots": args.shots, "seed": args.seed},
        "class_names": list(data.class_names),
        "metrics": {"val_score": result.val_score, **{f"test_{k}": v for k, v in test.items()}},
        "training": {**config.to_dict(), "seconds": round(result.seconds, 2), "trainable": result.trainable},
    })
    if isinstance(result.model.plugin, ZooAggregate):
        plot_gates(result.model.plugin, out / "gates.png", title=f"{args.method} gates on {data.spec.name}")
    print(f"{args.method} on {data.spec.name}: val {result.val_score:.4f}, test {test['score']:.4f} "
          f"({result.trainable} trainable parameters, {result.seconds:.1f} s) -> {out}")
    return 0


def run_evaluate(args) -> int:
    from vimw.aggregation import load_downstream
    from vimw.data import load_task
    from vimw.errors import DataError
    from vimw.training import evaluate

    model, manifest = load_downstream(args.model, zoo_dir=args.zoo)
    task = manifest.get("task", {})
    data = load_task(args.task or task.get("name"), seed=task.get("seed", 0))
    if data.num_classes != model.head_config.num_classes:
        raise DataError(
            f"task {data.spec.name!r} has {data.num_classes} classes but the model predicts "
            f"{model.head_config.num_classes}"
        )
    metrics = evaluate(model, data.test)
    if args.json:
        json.dump(metrics, sys.stdout, indent=2)
        print()
    else:
        print(f"{manifest['method']} model {args.model} on {data.spec.name} test ({len(data.test)} images): "
              + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "score"))
    return 0

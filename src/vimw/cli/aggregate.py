"""``vimw aggregate`` and ``vimw evaluate``: downstream models over a zoo."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(commands) -> None:
    from vimw.cli.zoo import _add_train_args
    from vimw.workflows.downstream import METHODS, DownstreamSettings

    defaults = DownstreamSettings()

    parser = commands.add_parser("aggregate", help="learn per-site gates over a zoo + a head for a downstream task")
    parser.add_argument("--recipe", help="a recipe file (YAML or JSON) whose 'aggregate' section gives the settings; "
                                         "flags override it")
    parser.add_argument("--zoo", help="zoo directory (required unless the recipe names it)")
    parser.add_argument("--task", help="task name, folder:DIR, npz:FILE, or an image folder / .npz path")
    parser.add_argument("--out", help="directory to write the downstream model to")
    parser.add_argument("--shots", type=int, help="training images per class (k-shot); default: all")
    parser.add_argument("--method", choices=("auto",) + METHODS,
                        help=f"aggregation mode or baseline (default {defaults.method}: train the candidates "
                             "within --budget and keep the best on validation)")
    parser.add_argument("--budget", type=float, default=900.0,
                        help="auto: seconds after which no further candidate is started (default 900)")
    parser.add_argument("--steps", type=int, default=120,
                        help="auto: optimiser steps per candidate run (epochs are sized to reach it; default 120)")
    parser.add_argument("--cv", type=int, default=0,
                        help="auto: compare methods by k-fold cross-validation over the labelled images (k >= 2; "
                             "k+1 times the training) instead of the validation split")
    parser.add_argument("--top-k", type=int, help=f"modules kept per site for --method topk (default {defaults.top_k})")
    parser.add_argument("--modules", help="comma-separated zoo module names (default: all on this backbone)")
    parser.add_argument("--image-size", type=int, help="input resolution (default: the zoo's)")
    parser.add_argument("--backbone", help="where the zoo's backbone is (default: what the zoo was built from)")
    parser.add_argument("--gate-lr", type=float,
                        help=f"learning rate of the gate logits (default {defaults.train.gate_lr}; the head uses --lr)")
    _add_train_args(parser)
    # ``None`` = not given: the recipe, then the defaults below, fill in the rest.
    parser.set_defaults(handler=run_aggregate, epochs=None, lr=None, batch_size=None, weight_decay=None, seed=None)

    evaluate = commands.add_parser("evaluate", help="evaluate a downstream model on a task's test split")
    evaluate.add_argument("--model", required=True, help="downstream model directory")
    evaluate.add_argument("--task", help="task (default: the one the model was trained on)")
    evaluate.add_argument("--zoo", help="zoo directory, if it moved since training")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(handler=run_evaluate)


def _default_section() -> dict:
    """``DownstreamSettings`` as a recipe's ``aggregate`` section: what neither a flag nor the recipe sets."""
    from vimw.workflows.downstream import DownstreamSettings

    defaults = DownstreamSettings()
    return {"method": defaults.method, "top_k": defaults.top_k, "train": defaults.train.to_dict()}


def effective_aggregate_recipe(args) -> dict:
    """The recipe this run follows: built-in defaults <- ``--recipe`` file <- flags."""
    from vimw.recipes import apply_overrides, load_recipe

    recipe = load_recipe(args.recipe) if getattr(args, "recipe", None) else {}
    section = dict(recipe.get("aggregate") or {})
    if "zoo" not in section and (recipe.get("zoo") or {}).get("dir"):
        section["zoo"] = recipe["zoo"]["dir"]
    defaults = _default_section()
    section = {**defaults, **section, "train": {**defaults["train"], **(section.get("train") or {})}}
    recipe = {**recipe, "aggregate": section}
    flags = {
        "zoo": args.zoo, "task": args.task, "out": args.out, "shots": args.shots, "method": args.method,
        "top_k": args.top_k, "modules": args.modules.split(",") if args.modules else None,
        "image_size": args.image_size, "backbone": getattr(args, "backbone", None),
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                  "weight_decay": args.weight_decay, "seed": args.seed, "gate_lr": args.gate_lr},
    }
    recipe = apply_overrides(recipe, "aggregate", flags)
    from vimw.errors import VimwError

    missing = [key for key in ("zoo", "task", "out") if not recipe["aggregate"].get(key)]
    if missing:
        raise VimwError("vimw aggregate needs " + ", ".join(f"--{k}" for k in missing)
                        + " (or a --recipe whose 'aggregate' section sets them)")
    return recipe


def run_aggregate(args) -> int:
    from vimw.aggregation import ZooAggregate, save_downstream
    from vimw.workflows.downstream import train_downstream
    from vimw.aggregation.plot import plot_gates
    from vimw.backbones import create_backbone
    from vimw.data import load_task
    from vimw.errors import VimwError
    from vimw.io.names import GATES_PLOT_FILE
    from vimw.training import evaluate
    from vimw.recipes import read_effective, save_effective, train_config
    from vimw.zoo import Zoo
    from vimw.zoo.recipe import backbone_source

    recipe = effective_aggregate_recipe(args)
    settings = recipe["aggregate"]
    method = settings["method"]
    if method == "full_ft":  # refuse before training, not after (it is the most expensive method)
        raise VimwError("full fine-tuning is a benchmark baseline; its models are not saved")
    if not Path(settings["zoo"]).is_dir():
        raise VimwError(f"no zoo at {settings['zoo']}: the directory does not exist")
    zoo = Zoo(settings["zoo"])
    rows = zoo.list()
    if not rows:
        raise VimwError(f"the zoo {settings['zoo']} is empty; build one with 'vimw zoo build --zoo {settings['zoo']}'")
    names = settings.get("modules")
    first = zoo.manifest((names or [rows[0][0]])[0])
    source = settings.get("backbone") or backbone_source(zoo.root, first.backbone)
    backbone = create_backbone(source, image_size=settings.get("image_size") or first.backbone.get("image_size"))
    config = train_config(settings["train"], "aggregate.train")
    shots = settings.get("shots")
    data = load_task(settings["task"], shots=shots, seed=config.seed)
    auto = None
    if method == "auto":
        from vimw.workflows.compare import run_auto

        # auto searches its own settings per candidate (the benchmark's grid, epochs sized by steps).
        auto = run_auto(backbone, data, zoo=zoo, seed=config.seed, shots=shots, names=names,
                        budget_seconds=getattr(args, "budget", None), folds=getattr(args, "cv", 0) or 0,
                        augment=config.augment, target_steps=getattr(args, "steps", 120))
        print(auto.explain())
        result, method = auto.result, auto.chosen.method
        config = config.replace(lr=auto.chosen.lr, gate_lr=auto.chosen.gate_lr, epochs=auto.chosen.epochs)
    else:
        result = train_downstream(method, backbone, data, config, zoo=zoo, names=names, top_k=settings["top_k"],
                                  progress=False if args.no_progress else None)
    test = evaluate(result.model, data.test, config.eval_batch_size)
    out = Path(settings["out"])
    save_downstream(out, result.model, {
        "method": method,
        **result.info,
        "task": {**data.spec.to_dict(), "shots": shots, "seed": config.seed},
        "class_names": list(data.class_names),
        "metrics": {"val_score": result.val_score, **{f"test_{k}": v for k, v in test.items()}},
        "training": {**config.to_dict(), "seconds": round(result.seconds, 2), "trainable": result.trainable},
        **({"auto": auto.to_dict()} if auto is not None else {}),
    })
    # The effective recipe beside the model: its settings (with every training field) and how the zoo was built.
    effective = {**recipe, "aggregate": {**settings, "backbone": source, "train": config.to_dict()}}
    try:
        zoo_recipe = read_effective(zoo.root)
    except VimwError:
        zoo_recipe = None
    if zoo_recipe and zoo_recipe.get("zoo"):
        effective["zoo"] = zoo_recipe["zoo"]
    save_effective(out, effective)
    if isinstance(result.model.plugin, ZooAggregate):
        plot_gates(result.model.plugin, out / GATES_PLOT_FILE, title=f"{method} gates on {data.spec.name}")
    if auto is not None:
        print(f"auto chose {method}: best validation accuracy ({result.val_score:.4f}) among the candidates "
              f"({auto.selection}; accuracy ties go to the lower validation loss)")
    print(f"{method} on {data.spec.name}: val {result.val_score:.4f}, test {test['score']:.4f} "
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

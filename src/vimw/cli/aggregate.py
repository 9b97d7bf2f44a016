"""``vimw aggregate`` and ``vimw evaluate``: downstream models over a zoo.

The work is ``vimw.workflows.aggregate``; this file parses, merges the recipe and prints.
"""

from __future__ import annotations

import json
import math
import sys

from vimw.cli.options import SKIP_BAD_HELP


def register(commands) -> None:
    parser = commands.add_parser("aggregate", help="learn per-site gates over a zoo + a head for a downstream task")
    _add_job_options(parser)
    _add_method_options(parser)
    _add_search_options(parser)
    parser.set_defaults(handler=run_aggregate)

    evaluate = commands.add_parser("evaluate", help="evaluate a downstream model on a task's test split")
    evaluate.add_argument("--model", required=True, help="downstream model directory")
    evaluate.add_argument("--task", help="task (default: the one the model was trained on)")
    evaluate.add_argument("--zoo", help="zoo directory, if it moved since training")
    evaluate.add_argument("--json", action="store_true")
    evaluate.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_HELP)
    evaluate.set_defaults(handler=run_evaluate)


def _add_job_options(parser) -> None:
    from vimw.cli.options import nonneg_int, positive_int

    parser.add_argument("--recipe", help="a recipe file (YAML or JSON) whose 'aggregate' section gives the settings; "
                                         "flags override it")
    parser.add_argument("--zoo", help="zoo directory (required unless the recipe names it)")
    parser.add_argument("--task", help="task name, folder:DIR, npz:FILE, or an image folder / .npz path")
    parser.add_argument("--out", help="directory to write the downstream model to")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    parser.add_argument("--shots", type=positive_int, help="training images per class (k-shot); default: all")
    parser.add_argument("--modules", help="comma-separated zoo module names (default: all on this backbone)")
    parser.add_argument("--image-size", type=nonneg_int, help="input resolution (default: the zoo's)")
    parser.add_argument("--backbone", help="where the zoo's backbone is (default: what the zoo was built from)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_HELP)


def _add_method_options(parser) -> None:
    from vimw.cli.options import number, positive_float, positive_int
    from vimw.methods import list_methods
    from vimw.workflows.aggregate import AUTO, AggregateSettings

    d = AggregateSettings()
    parser.add_argument("--method", choices=(AUTO, *list_methods()),
                        help=f"the method (default {d.method}: compare its candidates within --budget, by "
                             "cross-validation inside the shots with --shots, else on the validation split, and keep "
                             "the best)")
    parser.add_argument("--budget", type=positive_float,
                        help=f"auto: seconds for the whole run; a candidate still training then stops with the best "
                             f"it had, later ones are skipped (default {d.budget:g})")
    parser.add_argument("--cv", type=number(int, minimum=2),
                        help="auto: compare methods by k-fold cross-validation over the labelled images (k >= 2; "
                             "k+1 times the training) instead of the validation split")
    parser.add_argument("--top-k", type=positive_int, help=f"modules kept per site by --method topk (default {d.top_k})")


def _add_search_options(parser) -> None:
    from vimw.cli.options import fraction, nonneg_float, nonneg_int, positive_float, positive_int
    from vimw.workflows.compare import SearchSettings

    d = SearchSettings()
    parser.add_argument("--steps", type=positive_int,
                        help=f"optimiser steps per training run; epochs are sized to reach them (default {d.steps})")
    parser.add_argument("--epochs", type=positive_int, help="fixed epochs per training run instead of --steps")
    parser.add_argument("--lr", type=positive_float,
                        help="one learning rate instead of the method's grid (one --method only)")
    parser.add_argument("--gate-lr", type=positive_float,
                        help="one learning rate for learned gates instead of the method's grid (one --method only)")
    parser.add_argument("--batch-size", type=positive_int, help=f"default {d.batch_size}")
    parser.add_argument("--weight-decay", type=nonneg_float, help=f"default {d.weight_decay:g}")
    parser.add_argument("--warmup-fraction", type=fraction, help=f"default {d.warmup_fraction:g}")
    parser.add_argument("--no-augment", action="store_const", const=False, dest="augment",
                        help="train on the images as they are (default: random crops and shifts)")
    parser.add_argument("--seed", type=nonneg_int, help=f"fixes the shots and the training (default {d.seed})")


def aggregate_flags(args) -> dict:
    """The flags the user gave, keyed like a recipe's ``aggregate`` section (``None``: not given)."""
    train = {k: getattr(args, k) for k in ("steps", "epochs", "lr", "gate_lr", "batch_size", "weight_decay",
                                           "warmup_fraction", "augment", "seed")}
    return {"zoo": args.zoo, "task": args.task, "out": args.out, "shots": args.shots, "method": args.method,
            "budget": args.budget, "cv": args.cv, "top_k": args.top_k, "image_size": args.image_size,
            "modules": args.modules.split(",") if args.modules else None, "backbone": args.backbone, "train": train}


def effective_aggregate_recipe(args) -> dict:
    """The recipe this run follows: the settings' defaults <- ``--recipe`` file <- flags."""
    from vimw.recipes import load_recipe, resolve
    from vimw.workflows.aggregate import AggregateSettings

    recipe = load_recipe(args.recipe) if args.recipe else {}
    defaults = AggregateSettings().to_section()
    if not (recipe.get("aggregate") or {}).get("zoo") and (recipe.get("zoo") or {}).get("dir"):
        defaults["zoo"] = recipe["zoo"]["dir"]  # the zoo the recipe builds
    return resolve(recipe, "aggregate", aggregate_flags(args), defaults=defaults)


def run_aggregate(args) -> int:
    from vimw.workflows.aggregate import AggregateSettings, aggregate
    from vimw.workflows.reporting import SearchReporter

    recipe = effective_aggregate_recipe(args)
    settings = AggregateSettings.from_section(recipe["aggregate"])
    reporter = SearchReporter(lambda line: print(line, flush=True), terminal=False if args.no_progress else None)
    outcome = aggregate(settings, recipe=recipe, reporter=reporter, overwrite=args.overwrite,
                        skip_bad=args.skip_bad_images)
    if outcome.auto is not None:
        print(outcome.auto.explain())
        print(f"auto chose {outcome.method} ({outcome.auto.reason()})")
    for module, reasons in outcome.zoo_overlaps.items():
        print(f"note: zoo module {module!r} was trained on data this task shares ({'; '.join(reasons)}): "
              "its help here is not help on unseen data")
    result, data = outcome.result, outcome.data
    # True few-shot (--shots): no validation split; the held-out numbers are cross-validated inside the shots.
    if len(data.val):
        held = f"val {result.val_score:.4f} ({len(data.val)} images)"
    elif math.isnan(result.val_score):
        held = f"nothing held out ({len(data.train)} labelled images)"
    else:
        held = f"cross-validated {result.val_score:.4f} ({len(data.train)} labelled images)"
    print(f"{outcome.method} on {data.spec.name}: {held}, "
          f"test {outcome.test['score']:.4f} ({len(data.test)} images); {result.trainable:,} trainable parameters, "
          f"{result.seconds:.1f} s -> {outcome.out}")
    return 0


def run_evaluate(args) -> int:
    from vimw.workflows.aggregate import evaluate_saved

    metrics, manifest, data = evaluate_saved(args.model, task=args.task, zoo=args.zoo, skip_bad=args.skip_bad_images)
    if args.json:
        json.dump(metrics, sys.stdout, indent=2)
        print()
    else:
        print(f"{manifest['method']} model {args.model} on {data.spec.name} test ({len(data.test)} images): "
              + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "score"))
    return 0

"""``vimw transfer``: TransMiter step by step.

    vimw transfer extract  --task fmnist --base T-shirt/top Trouser Pullover Dress Coat --out runs/tm/weak
    vimw transfer apply    --adapter runs/tm/weak --to efficientnet_lite2@160 --out runs/tm/strong
    vimw transfer refine   --adapter runs/tm/strong --out runs/tm/strong-plus
    vimw transfer evaluate --adapter runs/tm/strong-plus --blend auto
    vimw transfer extract  --recipe recipes/default.yaml      # the recipe's transfer section; flags win

Each step parses its options, merges them over the recipe and the defaults
(``vimw.recipes.resolve``; the defaults are ``vimw.transfer.settings.TransferSettings``), calls one
function of ``vimw.transfer.workflow`` and prints what it returns. An option not given is
``None`` here, so that the recipe or the default decides. Misuse is a ``VimwError`` (exit 2,
``vimw: error: ...``).
"""

from __future__ import annotations

import json

from vimw.cli.options import nonneg_float, nonneg_int, number, positive_float, positive_int

MODEL_HELP = "NAME[@SIZE][+invert] (e.g. efficientnet_lite0@96+invert) or hf:<CLIP name or dir>[@SIZE]"


def _usage_error(message: str):
    from vimw.errors import VimwError

    raise VimwError(message)


def _blend(text: str):
    """``auto`` (chosen on validation images) or an alpha in [0, 1]."""
    return text if text == "auto" else number(float, minimum=0.0, maximum=1.0)(text)


# -- the parsers ------------------------------------------------------------------------------------
def register(commands) -> None:
    from vimw.transfer.settings import TransferSettings

    parser = commands.add_parser("transfer", help="TransMiter: extract an adaptation and move it to a stronger model")
    parser.error = _usage_error
    sub = parser.add_subparsers(dest="transfer_command", metavar="STEP")
    sub.required = True
    settings = TransferSettings()
    _extract_parser(sub, settings)
    _apply_parser(sub, settings)
    _refine_parser(sub, settings)
    _evaluate_parser(sub, settings)


def _step(sub, name: str, help_text: str, cache_help: str, *, adapter: str | None = None):
    """A step's parser with the options every step takes (``adapter``: what the step does to the one it reads)."""
    p = sub.add_parser(name, help=help_text)
    p.error = _usage_error
    where = "transfer section's top-level keys give" if name == "extract" else f"transfer.{name} section gives"
    p.add_argument("--recipe", metavar="FILE",
                   help=f"a recipe (YAML or JSON) whose {where} this step's options; flags win")
    p.add_argument("--cache", help=f"zero-shot logit cache ({cache_help})")
    p.add_argument("--device", default="cpu")
    if adapter:
        p.add_argument("--adapter", help=f"the adapter to {adapter} (required unless the recipe names it)")
    return p


def _end_step(p, handler, protocol: str, chosen: str, out_help: str | None = "required unless the recipe names it"):
    """The options every step ends with: the validation protocol of what it chooses, and where it writes."""
    _protocol_option(p, protocol, chosen)
    if out_help:
        p.add_argument("--out", help=out_help)
    p.set_defaults(handler=handler)


def _protocol_option(p, default: str, what: str) -> None:
    from vimw.transfer.scoring import VALIDATION_PROTOCOLS

    p.add_argument("--protocol", choices=VALIDATION_PROTOCOLS,
                   help=f"validation images for {what}: all classes (score HM) or base classes only "
                        f"(novel labels never seen); default {default}")


def _data_options(p, d) -> None:
    """The task, the split and the image counts (``DataConfig``)."""
    from vimw.transfer.data import EXTRACTION_SETS

    p.add_argument("--task", help=f"any task vimw knows, e.g. fmnist or folder:DIR (default {d.task})")
    p.add_argument("--base", nargs="+",
                   help="base class names, the rest are novel (default: the first half of the task's classes)")
    p.add_argument("--shots", type=positive_int, help=f"labelled images per base class (default {d.shots})")
    p.add_argument("--val-per-class", type=positive_int, help=f"default {d.val_per_class}")
    p.add_argument("--pool-per-class", type=positive_int, help=f"default {d.pool_per_class}")
    p.add_argument("--num-unlabeled", type=positive_int,
                   help=f"unlabeled images for extraction (default {d.num_unlabeled})")
    p.add_argument("--num-align", type=nonneg_int,
                   help=f"unlabeled images added to the training shots' images for the alignment (default {d.num_align})")
    p.add_argument("--num-calibration", type=positive_int, help=f"default {d.num_calibration}")
    p.add_argument("--num-test", type=positive_int, help=f"default {d.num_test}")
    p.add_argument("--views", type=number(int, minimum=1, maximum=4),
                   help=f"augmented views per training and extraction image, 1-4 (default {d.views})")
    p.add_argument("--align-views", type=number(int, minimum=1, maximum=4),
                   help=f"augmented views per alignment image, 1-4 (default {d.align_views})")
    p.add_argument("--extraction", choices=EXTRACTION_SETS,
                   help="the images extraction distils on: the base shots' (as the reference) or those plus the "
                        f"unlabeled images (default {d.extraction})")
    p.add_argument("-K", "--K", dest="K", type=number(int, minimum=2),
                   help=f"logits: task classes + K - C auxiliary words (default {d.K})")
    p.add_argument("--template", help=f"prompt template (default {d.template!r})")
    p.add_argument("--data-seed", type=nonneg_int, help=f"fixes the image sets (default {d.data_seed})")


def _extract_parser(sub, s) -> None:
    p = _step(sub, "extract", "fine-tune the weak model (unless given) and extract an adapter, without labels",
              f"default {s.cache}")
    p.add_argument("--weak", help=f"the weak model: {MODEL_HELP} (default {s.weak})")
    p.add_argument("--finetuned", help="a teacher dir from an earlier extract, a zoo dir (ViM aggregation) or a module "
                                       f"kind (default {s.finetuned})")
    _data_options(p, s.data)
    p.add_argument("--seed", type=nonneg_int, help=f"the training seed: shots, validation, training (default {s.seed})")
    p.add_argument("--epochs", type=positive_int, help=f"teacher fine-tuning epochs (default {s.teacher.epochs})")
    p.add_argument("--lr", type=positive_float, help=f"teacher fine-tuning learning rate (default {s.teacher.lr:g})")
    p.add_argument("--consistency", type=nonneg_float,
                   help="weight of the teacher's consistency term toward its zero-shot predictions, 0: off "
                        f"(default {s.teacher.consistency:g})")
    p.add_argument("--extraction-epochs", type=positive_int, help=f"default {s.extraction.epochs}")
    _end_step(p, run_extract, s.teacher_protocol, "the teacher's epoch",
              "where the adapter (and the teacher) go; required unless the recipe names it")


def _apply_parser(sub, s) -> None:
    p = _step(sub, "apply", "move an adapter to another zero-shot model (no backpropagation)", "default: the adapter's",
              adapter="move")
    p.add_argument("--to", help=f"the target model: {MODEL_HELP} (default {s.strong})")
    p.add_argument("--lambdas", type=nonneg_float, nargs="+",
                   help="Procrustes lambda per image: one value, or candidates chosen on validation images "
                        f"(default {' '.join(f'{v:g}' for v in s.lambdas)})")
    _end_step(p, run_apply, s.protocol, "lambda")


def _refine_parser(sub, s) -> None:
    p = _step(sub, "refine", "TransMiter+: refine an adapter on the base-class shots", "default: the adapter's",
              adapter="refine")
    p.add_argument("--lr", type=positive_float, nargs="+",
                   help=f"candidate learning rates (default {' '.join(f'{v:g}' for v in s.refine.lrs)})")
    p.add_argument("--epochs", type=positive_int, help=f"default {s.refine.epochs}")
    p.add_argument("--distill", type=nonneg_float,
                   help="weight of the pull toward the adapter refinement starts from (KL over all K logits on "
                        f"the alignment images), which keeps the novel classes; 0: cross-entropy alone "
                        f"(default {s.refine.distill:g})")
    _end_step(p, run_refine, s.protocol, "the learning rate and epoch")


def _evaluate_parser(sub, s) -> None:
    p = _step(sub, "evaluate", "base / novel / HM of an adapter on its model's test images", "default: the adapter's",
              adapter="score")
    p.add_argument("--blend", type=_blend,
                   help="alpha of alpha*adapter + (1-alpha)*zero-shot (log-probabilities), or 'auto' to choose it "
                        f"on validation images; 1 = the adapter alone (default {s.blend})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _end_step(p, run_evaluate, s.protocol, "the blend", out_help=None)


# -- the handlers -----------------------------------------------------------------------------------
EXTRACT_FLAGS = ("task", "base", "shots", "val_per_class", "pool_per_class", "num_unlabeled", "num_align",
                 "num_calibration", "num_test", "views", "align_views", "extraction", "K", "template", "data_seed",
                 "weak", "finetuned", "seed",
                 "epochs", "lr", "consistency", "extraction_epochs", "protocol", "cache", "out")
STEP_FLAGS = {"apply": ("adapter", "to", "lambdas", "protocol", "out", "cache"),
              "refine": ("adapter", "lr", "epochs", "distill", "protocol", "out", "cache"),
              "evaluate": ("adapter", "blend", "protocol", "cache")}


def transfer_flags(args, step: str) -> dict:
    """The flags the user gave, keyed like a recipe's ``transfer`` section (``None``: not given)."""
    if step == "extract":
        return {k: getattr(args, k) for k in EXTRACT_FLAGS}
    return {step: {k: getattr(args, k) for k in STEP_FLAGS[step]}}


def effective_transfer(args, step: str):
    """(the effective recipe, the step's options with its paths, ``TransferSettings``): the defaults
    <- the ``--recipe`` file's transfer section <- the flags."""
    from vimw.recipes import load_recipe, resolve
    from vimw.transfer.settings import TransferSettings, check_section

    loaded = load_recipe(args.recipe) if args.recipe else {}
    check_section(loaded.get("transfer") or {}, f"{args.recipe}: transfer")
    recipe = resolve(loaded, "transfer", transfer_flags(args, step), defaults=TransferSettings().to_section())
    section = recipe["transfer"]
    options = section if step == "extract" else section.get(step) or {}
    for key in ("out", "adapter"):
        if key in (STEP_FLAGS.get(step) or EXTRACT_FLAGS) and not options.get(key):
            where = "transfer" + ("" if step == "extract" else f".{step}")
            _usage_error(f"vimw transfer {step} needs --{key} (or {where}.{key} in the recipe)")
    return recipe, options, TransferSettings.from_section(section, step)


def run_extract(args) -> int:
    from vimw.transfer.workflow import extract_step

    recipe, options, settings = effective_transfer(args, "extract")
    done = extract_step(options["out"], settings, device=args.device, recipe=recipe)
    print(f"adapter (K={done['K']}, C={done['C']}) extracted from {done['rows']} rows of {done['model']} "
          f"(no labels) -> {done['out']}")
    return 0


def run_apply(args) -> int:
    from vimw.transfer.workflow import apply_step

    recipe, options, s = effective_transfer(args, "apply")
    done = apply_step(options["adapter"], s.strong, options["out"], lambdas=s.lambdas, protocol=s.protocol,
                      cache=options.get("cache"), device=args.device, recipe=recipe)
    for cand in done["candidates"] or []:
        print(f"  lambda/image {cand['lambda']:g}: validation score {cand['score']:.4f}, loss {cand['loss']:.4f}")
    print(f"transferred to {done['model']} without backpropagation (lambda/image {done['lambda']:g}, "
          f"{done['rows']} aligned rows) -> {done['out']}")
    return 0


def run_refine(args) -> int:
    from vimw.transfer.workflow import refine_step

    recipe, options, s = effective_transfer(args, "refine")
    done = refine_step(options["adapter"], options["out"], refine=s.refine, protocol=s.protocol,
                       cache=options.get("cache"), device=args.device, recipe=recipe)
    for cand in done["candidates"]:
        print(f"  lr {cand['lr']:g}: kept epoch {cand['epoch']}, validation score {cand.get('score', float('nan')):.4f}")
    print(f"TransMiter+ (lr {done['lr']:g}, epoch {done['epoch']}) -> {done['out']}")
    return 0


def run_evaluate(args) -> int:
    from vimw.transfer.workflow import evaluate_step

    _, options, s = effective_transfer(args, "evaluate")
    result = evaluate_step(options["adapter"], blend=s.blend, protocol=s.protocol, cache=options.get("cache"),
                           device=args.device)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']}, {result['test_images']} test images (blend alpha {result['alpha']:g})")
    for name, row in result["scores"].items():
        print(f"  {name:12s} base {row['base']:.4f}  novel {row['novel']:.4f}  HM {row['hm']:.4f}")
    return 0

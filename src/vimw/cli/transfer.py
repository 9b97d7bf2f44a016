"""``vimw transfer``: TransMiter step by step.

    vimw transfer extract  --task fmnist --base T-shirt/top Trouser Pullover Dress Coat --out runs/tm/weak
    vimw transfer apply    --adapter runs/tm/weak --to efficientnet_lite2@160 --out runs/tm/strong
    vimw transfer refine   --adapter runs/tm/strong --out runs/tm/strong-plus
    vimw transfer evaluate --adapter runs/tm/strong-plus --blend auto

Each step calls one function of ``vimw.transfer.workflow``; every default comes from the
library's configuration dataclasses. Misuse is a ``VimwError`` (exit 2, ``vimw: error: ...``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

STEPS = ("extract", "apply", "refine", "evaluate")


def _usage_error(message: str):
    from vimw.errors import VimwError

    raise VimwError(message)


def _number(kind, *, minimum=None, maximum=None, strict=False):
    """An argparse type that refuses out-of-range values with a plain message."""
    import argparse

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if minimum is not None and (value <= minimum if strict else value < minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {text}")
        return value

    return parse


def _blend(text: str):
    """``auto`` (None: chosen on validation images) or an alpha in [0, 1]."""
    return None if text == "auto" else _number(float, minimum=0.0, maximum=1.0)(text)


def expand_recipe_argv(argv: list[str]) -> list[str]:
    """``vimw transfer STEP --recipe FILE ...``: the recipe's ``transfer`` section as flags.

    Top-level keys of the section are options of ``extract``; the sub-sections ``apply``,
    ``refine`` and ``evaluate`` hold those steps' options (keys are option names, ``_`` for
    ``-``). They go before the user's own flags, so flags on the command line win.
    """
    if "--recipe" not in argv:
        return argv
    from vimw.errors import FormatError
    from vimw.recipes import load_recipe

    at = argv.index("--recipe")
    if at + 1 >= len(argv):
        raise FormatError("--recipe needs a file")
    rest = argv[:at] + argv[at + 2:]
    step = rest[1] if len(rest) > 1 else ""
    if step not in STEPS:
        raise FormatError(f"vimw transfer --recipe: the step must be one of {STEPS}, got {step!r}")
    section = load_recipe(argv[at + 1]).get("transfer") or {}
    if not isinstance(section, dict):
        raise FormatError("recipe: transfer must be a mapping")
    values = {k: v for k, v in section.items() if k not in STEPS} if step == "extract" else section.get(step) or {}
    if not isinstance(values, dict):
        raise FormatError(f"recipe: transfer.{step} must be a mapping of option names to values")
    flags: list[str] = []
    for key, value in values.items():
        flag = "--" + str(key).replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            flags.append(flag)
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return rest[:2] + flags + rest[2:]


def register(commands) -> None:
    from vimw.transfer.protocol import DEFAULT_WEAK, DataConfig, ProtocolConfig
    from vimw.transfer.scoring import VALIDATION_PROTOCOLS
    from vimw.transfer.steps import LAMBDA_GRID, ExtractionConfig, RefineConfig
    from vimw.transfer.teacher import TeacherConfig
    from vimw.transfer.workflow import DEFAULT_CACHE

    pos_int, nonneg_int = _number(int, minimum=1), _number(int, minimum=0)
    pos_float, nonneg_float = _number(float, minimum=0.0, strict=True), _number(float, minimum=0.0)
    d, t, x, r = DataConfig, TeacherConfig, ExtractionConfig, RefineConfig

    parser = commands.add_parser("transfer", help="TransMiter: extract an adaptation and move it to a stronger model")
    parser.error = _usage_error
    sub = parser.add_subparsers(dest="transfer_command", metavar="STEP")
    sub.required = True

    def step(name: str, help_text: str):
        p = sub.add_parser(name, help=help_text)
        p.error = _usage_error
        p.add_argument("--cache", default=None, help=f"zero-shot logit cache (default: the adapter's, or {DEFAULT_CACHE})")
        p.add_argument("--device", default="cpu")
        return p

    def protocol_option(p):
        p.add_argument("--protocol", choices=VALIDATION_PROTOCOLS, default="all",
                       help="validation images for every choice: all classes (HM) or base classes only")

    p = step("extract", "fine-tune the weak model (unless given) and extract an adapter, without labels")
    p.add_argument("--weak", default=DEFAULT_WEAK, help="ARCH@SIZE[+invert] or hf:<CLIP name or dir>")
    p.add_argument("--finetuned", default=ProtocolConfig.plugin,
                   help="a teacher dir from an earlier extract, a zoo dir (ViM aggregation) or a module kind")
    p.add_argument("--task", default=d.task)
    p.add_argument("--base", nargs="+", default=list(d.base), help="base class names (the rest are novel)")
    p.add_argument("--shots", type=pos_int, default=d.shots, help="labelled images per base class")
    p.add_argument("--val-per-class", type=pos_int, default=d.val_per_class)
    p.add_argument("--pool-per-class", type=pos_int, default=d.pool_per_class)
    p.add_argument("--num-unlabeled", type=pos_int, default=d.num_unlabeled, help="unlabeled images for extraction")
    p.add_argument("--num-align", type=nonneg_int, default=d.num_align,
                   help="unlabeled images added to the training shots' images for the alignment")
    p.add_argument("--num-calibration", type=pos_int, default=d.num_calibration)
    p.add_argument("--num-test", type=pos_int, default=d.num_test)
    p.add_argument("--views", type=_number(int, minimum=1, maximum=4), default=d.views,
                   help="augmented views per extraction and alignment image (1-4)")
    p.add_argument("-K", type=_number(int, minimum=2), default=d.K, help="logits: task classes + K - C auxiliary words")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--data-seed", type=nonneg_int, default=d.data_seed, help="fixes the image sets")
    p.add_argument("--epochs", type=pos_int, default=t.epochs, help="teacher fine-tuning epochs")
    p.add_argument("--lr", type=pos_float, default=t.lr, help="teacher fine-tuning learning rate")
    p.add_argument("--consistency", type=nonneg_float, default=t.consistency,
                   help="weight of the teacher's consistency term toward its zero-shot predictions (0: off)")
    p.add_argument("--extraction-epochs", type=pos_int, default=x.epochs)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=run_extract)

    p = step("apply", "move an adapter to another zero-shot model (no backpropagation)")
    p.add_argument("--adapter", required=True)
    p.add_argument("--to", required=True, help="target model: ARCH@SIZE[+invert] or hf:<CLIP name or dir>")
    p.add_argument("--lambdas", type=nonneg_float, nargs="+", default=list(LAMBDA_GRID),
                   help="Procrustes lambda per image: one value, or candidates chosen on validation images")
    protocol_option(p)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=run_apply)

    p = step("refine", "TransMiter+: refine an adapter on the base-class shots")
    p.add_argument("--adapter", required=True)
    p.add_argument("--lr", type=pos_float, nargs="+", default=list(r.lrs), help="candidate learning rates")
    p.add_argument("--epochs", type=pos_int, default=r.epochs)
    protocol_option(p)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=run_refine)

    p = step("evaluate", "base / novel / HM of an adapter on its model's test images")
    p.add_argument("--adapter", required=True)
    p.add_argument("--blend", type=_blend, default=1.0,
                   help="alpha of alpha*adapter + (1-alpha)*zero-shot (log-probabilities), or 'auto' to choose it "
                        "on validation images; 1 = the adapter alone")
    protocol_option(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run_evaluate)


def run_extract(args) -> int:
    from vimw.transfer.protocol import DataConfig
    from vimw.transfer.steps import ExtractionConfig
    from vimw.transfer.teacher import TeacherConfig
    from vimw.transfer.workflow import DEFAULT_CACHE, extract_step

    data = DataConfig(task=args.task, base=tuple(args.base), shots=args.shots, val_per_class=args.val_per_class,
                      pool_per_class=args.pool_per_class, num_unlabeled=args.num_unlabeled, num_align=args.num_align,
                      num_calibration=args.num_calibration, num_test=args.num_test, views=args.views, K=args.K,
                      data_seed=args.data_seed)
    done = extract_step(args.out, data=data, weak=args.weak, finetuned=args.finetuned, seed=args.seed,
                        teacher=TeacherConfig(lr=args.lr, epochs=args.epochs, consistency=args.consistency),
                        extraction=ExtractionConfig(epochs=args.extraction_epochs), cache=args.cache or DEFAULT_CACHE,
                        device=args.device)
    print(f"adapter (K={done['K']}, C={done['C']}) extracted from {done['rows']} unlabeled rows of {done['model']} "
          f"-> {done['out']}")
    return 0


def run_apply(args) -> int:
    from vimw.transfer.workflow import apply_step

    done = apply_step(args.adapter, args.to, args.out, lambdas=args.lambdas, protocol=args.protocol,
                      cache=args.cache, device=args.device)
    for cand in done["candidates"] or []:
        print(f"  lambda/image {cand['lambda']:g}: validation score {cand['score']:.4f}, loss {cand['loss']:.4f}")
    print(f"transferred to {done['model']} without backpropagation (lambda/image {done['lambda']:g}, "
          f"{done['rows']} aligned rows) -> {done['out']}")
    return 0


def run_refine(args) -> int:
    from vimw.transfer.steps import RefineConfig
    from vimw.transfer.workflow import refine_step

    done = refine_step(args.adapter, args.out, refine=RefineConfig(lrs=tuple(args.lr), epochs=args.epochs),
                       protocol=args.protocol, cache=args.cache, device=args.device)
    for cand in done["candidates"]:
        print(f"  lr {cand['lr']:g}: kept epoch {cand['epoch']}, validation score {cand.get('score', float('nan')):.4f}")
    print(f"TransMiter+ (lr {done['lr']:g}, epoch {done['epoch']}) -> {done['out']}")
    return 0


def run_evaluate(args) -> int:
    from vimw.transfer.workflow import evaluate_step

    result = evaluate_step(args.adapter, blend=args.blend, protocol=args.protocol, cache=args.cache, device=args.device)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']}, {result['test_images']} test images (blend alpha {result['alpha']:g})")
    for name, row in result["scores"].items():
        print(f"  {name:12s} base {row['base']:.4f}  novel {row['novel']:.4f}  HM {row['hm']:.4f}")
    return 0


# -- the demo step ---------------------------------------------------------------------------------
def run_demo_step(workdir: Path, seed: int = 0) -> None:
    """The weak -> strong story on small image counts (the logits are cached)."""
    from vimw.io import atomic_write_text, write_json
    from vimw.transfer.protocol import demo_config, format_demo, run_protocol

    workdir = Path(workdir)
    started = time.perf_counter()
    cfg = demo_config()
    result = run_protocol(cfg, workdir / "transfer-cache", seeds=(seed,), log=lambda m: None)
    text = format_demo(result)
    print(text)
    atomic_write_text(workdir / "transfer_results.md", text + "\n")
    write_json(workdir / "transfer_results.json", result)
    print(f"  transfer step finished in {time.perf_counter() - started:.0f} s")

"""``vimw zoo ...``: train, build, list, show, verify and remove zoo modules; rank them for a task;
import, diff and describe (module cards) zoos; export/import PEFT LoRA adapters."""

from __future__ import annotations

import json
import sys


def register(commands) -> None:
    parser = commands.add_parser("zoo", help="build and inspect a module zoo")
    sub = parser.add_subparsers(dest="zoo_command", metavar="ACTION")
    sub.required = True
    for add in (_add_train, _add_build, _add_rank, _add_sharing, _add_inspection, _add_peft):
        add(sub)


def _add_train(sub) -> None:
    from vimw.cli.options import SKIP_BAD_HELP, nonneg_int, positive_int, zoo_to_write
    from vimw.modules import list_module_kinds
    from vimw.workflows.midstream import MidstreamRecipe

    train = sub.add_parser("train", help="train one module on a midstream task and add it to the zoo")
    train.add_argument("--zoo", required=True, type=zoo_to_write, help="zoo directory (created if missing)")
    train.add_argument("--task", required=True, help="midstream task name (see 'vimw data list') or folder:/npz: path")
    train.add_argument("--name", help="module name in the zoo (default: the task name)")
    train.add_argument("--kind", default=MidstreamRecipe.kind, choices=list_module_kinds(),
                       help=f"module kind (default {MidstreamRecipe.kind})")
    train.add_argument("--hidden-dim", type=positive_int, help="convpass/adapter hidden size d")
    train.add_argument("--rank", type=positive_int, help="lora rank")
    train.add_argument("--first-block", type=nonneg_int, help="attach only to sites from this block on")
    _add_backbone_args(train)
    _add_train_args(train)
    train.add_argument("--max-train", type=positive_int, help="use at most this many training images (stratified)")
    train.add_argument("--max-test", type=positive_int, help="evaluate on at most this many test images")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace a module of the same name")
    train.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard scalars here (extra 'tensorboard')")
    train.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_HELP)
    train.set_defaults(handler=run_train)


def _add_build(sub) -> None:
    from vimw.cli.options import nonneg_int, positive_int, zoo_to_write

    build = sub.add_parser("build", help="train the default zoo recipe, or a --recipe (skips modules already present)")
    build.add_argument("--zoo", type=zoo_to_write,
                       help="zoo directory (required unless the recipe's zoo section sets 'dir')")
    build.add_argument("--recipe", help="a recipe file (YAML or JSON) whose 'zoo' section lists the modules; "
                                        "flags override it (default: the built-in default zoo)")
    build.add_argument("--backbone", help="backbone name (overrides the recipe's)")
    build.add_argument("--image-size", type=nonneg_int, help="input resolution in pixels (overrides the recipe's; "
                                                             "0 = the backbone's native)")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    build.add_argument("--jobs", type=positive_int, default=1,
                       help="train this many modules at once, each in its own process (default 1); under "
                            "torchrun each rank trains its share of the modules instead")
    build.add_argument("--demo", action="store_true", help="build the demo's subset of the default zoo")
    build.set_defaults(handler=run_build)


def _add_rank(sub) -> None:
    from vimw.cli.options import SKIP_BAD_HELP, nonneg_int, positive_int, zoo_to_read
    from vimw.workflows.rank import RANK_MAX_IMAGES

    rank = sub.add_parser("rank", help="score every module for a task without fine-tuning (LogME on features "
                                        "with the module plugged in) and print them best first")
    rank.add_argument("--zoo", required=True, type=zoo_to_read)
    rank.add_argument("--task", required=True, help="downstream task name or folder:/npz: path")
    rank.add_argument("--shots", type=positive_int, help="labelled images per class to score on (default: the "
                                                         "whole training split, at most --max-images)")
    rank.add_argument("--seed", type=nonneg_int, default=0)
    rank.add_argument("--max-images", type=positive_int, default=RANK_MAX_IMAGES,
                      help=f"score on at most this many images (default {RANK_MAX_IMAGES})")
    rank.add_argument("--image-size", type=nonneg_int, help="input resolution (default: the zoo's)")
    rank.add_argument("--json", action="store_true", help="machine-readable output")
    rank.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_HELP)
    rank.set_defaults(handler=run_rank)


def _add_sharing(sub) -> None:
    from vimw.cli.options import zoo_to_read, zoo_to_write

    imp = sub.add_parser("import", help="copy modules from another zoo directory (sha256 and backbone checked)")
    imp.add_argument("source", type=zoo_to_read, help="the zoo directory to copy from")
    imp.add_argument("--zoo", required=True, type=zoo_to_write, help="the zoo to copy into (created if missing)")
    imp.add_argument("--modules", nargs="+", metavar="NAME", help="which modules (default: all)")
    imp.add_argument("--rename", nargs="+", default=[], metavar="OLD=NEW", help="import OLD under the name NEW")
    imp.set_defaults(handler=run_import)

    diff = sub.add_parser("diff", help="which modules two zoos share, differ in, or hold alone")
    diff.add_argument("a", type=zoo_to_read)
    diff.add_argument("b", type=zoo_to_read)
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(handler=run_diff)

    card = sub.add_parser("card", help="(re)write the README.md module card of every module from its manifest")
    card.add_argument("--zoo", required=True, type=zoo_to_read)
    card.add_argument("names", nargs="*", help="only these modules")
    card.set_defaults(handler=run_card)


def _add_inspection(sub) -> None:
    from vimw.cli.options import zoo_to_read

    add_list_arguments(sub.add_parser("list", help=LIST_HELP))

    show = sub.add_parser("show", help="print one module's manifest")
    show.add_argument("name")
    show.add_argument("--zoo", required=True, type=zoo_to_read)
    show.set_defaults(handler=run_show)

    verify = sub.add_parser("verify", help="check every module's files, checksums and manifest")
    verify.add_argument("--zoo", required=True, type=zoo_to_read)
    verify.add_argument("--repair", action="store_true",
                        help="first clean up after interrupted writers: remove their staging leftovers, "
                             "re-index complete orphan modules, remove incomplete ones")
    verify.set_defaults(handler=run_verify)

    remove = sub.add_parser("remove", help="remove one module")
    remove.add_argument("name")
    remove.add_argument("--zoo", required=True, type=zoo_to_read)
    remove.set_defaults(handler=run_remove)


def _add_peft(sub) -> None:
    from vimw.cli.options import zoo_to_read, zoo_to_write

    export_peft = sub.add_parser("export-peft", help="write a lora module on an HF backbone (CLIP, ViT, DINOv2, "
                                                     "SigLIP) as a PEFT LoRA adapter")
    export_peft.add_argument("name", help="the lora module in the zoo")
    export_peft.add_argument("--zoo", required=True, type=zoo_to_read)
    export_peft.add_argument("--out", required=True, help="adapter directory (adapter_config.json + "
                                                          "adapter_model.safetensors)")
    export_peft.add_argument("--backbone", help="hf:<name or dir> (default: the module manifest's backbone source)")
    export_peft.add_argument("--overwrite", action="store_true", help="replace an adapter already in --out")
    export_peft.set_defaults(handler=run_export_peft)

    import_peft = sub.add_parser("import-peft", help="add a PEFT LoRA adapter (safetensors) on an HF vision model "
                                                     "(CLIP, ViT, DINOv2, SigLIP) to the zoo as a lora module")
    import_peft.add_argument("adapter", help="PEFT adapter directory")
    import_peft.add_argument("--zoo", required=True, type=zoo_to_write, help="zoo directory (created if missing)")
    import_peft.add_argument("--name", help="module name in the zoo (default: the adapter directory's name)")
    import_peft.add_argument("--backbone", help="hf:<name or dir> (default: the adapter's base_model_name_or_path)")
    import_peft.add_argument("--overwrite", action="store_true", help="replace a module of the same name")
    import_peft.set_defaults(handler=run_import_peft)


def _add_backbone_args(parser) -> None:
    from vimw.cli.options import nonneg_int
    from vimw.workflows.midstream import DEFAULT_BACKBONE, DEFAULT_IMAGE_SIZE

    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"backbone name (default {DEFAULT_BACKBONE})")
    parser.add_argument("--image-size", type=nonneg_int, default=DEFAULT_IMAGE_SIZE,
                        help=f"input resolution in pixels (default {DEFAULT_IMAGE_SIZE}; 0 = the backbone's native)")


def _add_train_args(parser) -> None:
    from vimw.cli.options import nonneg_float, nonneg_int, positive_float, positive_int
    from vimw.training import TrainConfig

    defaults = TrainConfig()
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--lr", type=positive_float, default=defaults.lr)
    parser.add_argument("--weight-decay", type=nonneg_float, default=defaults.weight_decay)
    parser.add_argument("--seed", type=nonneg_int, default=defaults.seed)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def train_config_from_args(args):
    """The ``TrainConfig`` the training flags describe."""
    from vimw.training import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, seed=args.seed)


def default_module_name(task: str) -> str:
    """A valid zoo name for a task: its registered name, or the stem of the user's folder / .npz.

    The whole path would make names that are long, machine-specific, and invalid as soon as
    it holds a space or another character a zoo name cannot contain.
    """
    import re
    from pathlib import Path

    from vimw.data.sources import FOLDER_PREFIX, NPZ_PREFIX

    text = task
    for prefix in (FOLDER_PREFIX, NPZ_PREFIX):
        if text.startswith(prefix):
            text = Path(text[len(prefix):]).expanduser().absolute().stem
            break
    else:
        if "/" in text or Path(text).exists():
            text = Path(text).expanduser().absolute().stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:100]
    return name or "module"


def run_train(args) -> int:
    from vimw.training import distributed as dist_utils
    from vimw.zoo import Zoo
    from vimw.workflows.midstream import MidstreamRecipe, train_module

    overrides = {k: v for k, v in (("hidden_dim", args.hidden_dim), ("rank", args.rank),
                                   ("first_block", args.first_block)) if v is not None}
    recipe = MidstreamRecipe(
        name=args.name or default_module_name(args.task),
        task=args.task, kind=args.kind, module=overrides, train=train_config_from_args(args),
        max_train=args.max_train, max_test=args.max_test,
    )
    manifest = train_module(
        Zoo(args.zoo), recipe, backbone_name=args.backbone, image_size=args.image_size or None,
        resume=args.resume, progress=False if args.no_progress else None, overwrite=args.overwrite,
        tensorboard_dir=args.tensorboard, skip_bad=args.skip_bad_images,
    )
    if dist_utils.is_main_process():
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in manifest.metrics.items() if isinstance(v, float))
        print(f"added {manifest.name} ({manifest.kind}, {manifest.num_parameters} parameters): {metrics}")
    return 0


def effective_zoo_recipe(args) -> dict:
    """The build's recipe: ``--recipe`` (or the built-in default zoo) <- flags."""
    from vimw.errors import VimwError
    from vimw.recipes import default_recipe, load_recipe, resolve

    if args.recipe:
        recipe = load_recipe(args.recipe)
        if not (recipe.get("zoo") or {}).get("modules"):
            raise VimwError(f"recipe {args.recipe} has no modules under 'zoo'")
    else:
        recipe = {"zoo": default_recipe()["zoo"]}
        if args.zoo:
            recipe["zoo"].pop("dir")
    recipe = resolve(recipe, "zoo", {"dir": args.zoo, "backbone": args.backbone, "image_size": args.image_size})
    if not recipe["zoo"].get("dir"):
        raise VimwError("vimw zoo build needs --zoo (or a --recipe whose 'zoo' section sets 'dir')")
    return recipe


def run_build(args) -> int:
    from vimw.recipes import midstream_recipes
    from vimw.zoo import verify_or_raise
    from vimw.workflows.midstream import DEFAULT_BACKBONE, DEFAULT_IMAGE_SIZE, build_zoo

    recipe = effective_zoo_recipe(args)
    section = recipe["zoo"]
    backbone = section.get("backbone") or DEFAULT_BACKBONE
    image_size = section["image_size"] if "image_size" in section else DEFAULT_IMAGE_SIZE
    modules = midstream_recipes(recipe)
    if getattr(args, "demo", False):
        from vimw.workflows.midstream import DEMO_MODULES

        modules = tuple(m for m in modules if m.name in DEMO_MODULES)
    zoo = build_zoo(section["dir"], modules, backbone_name=backbone, image_size=image_size or None,
                    progress=False if args.no_progress else None, jobs=args.jobs)
    from vimw.training import distributed as dist_utils

    if dist_utils.is_main_process():  # under torchrun, rank 0 alone checks and lists the zoo
        verify_or_raise(zoo)
        print_modules(zoo.list())
    return 0


def existing_zoo(path: str):
    """The zoo at ``path`` (a ``--zoo`` of type ``zoo_to_read``: a directory that exists)."""
    from vimw.zoo import Zoo

    return Zoo(path)


LIST_HELP = "list the zoo's modules (reads the index only)"


def add_list_arguments(parser):
    """The options of ``vimw zoo list``, also used by its fast path (``list_parser``)."""
    from vimw.cli.options import zoo_to_read

    parser.add_argument("--zoo", required=True, type=zoo_to_read)
    parser.add_argument("--kind")
    parser.add_argument("--task", help="substring of the task name")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run_list)
    return parser


def list_parser():
    """A parser for ``vimw zoo list`` alone: listing needs neither torch nor the other commands."""
    from vimw.cli.options import Parser

    return add_list_arguments(Parser(prog="vimw zoo list", description=LIST_HELP))


def run_list(args) -> int:
    from vimw.zoo.index import read_index, select

    index = read_index(args.zoo)
    print_modules(select(index, kind=args.kind, task=args.task), as_json=args.json, zoo_dir=args.zoo)
    return 0


def print_modules(rows, *, as_json: bool = False, zoo_dir: str = "") -> None:
    """Print index rows as a table, or as JSON with ``as_json``."""
    if as_json:
        json.dump({name: entry for name, entry in rows}, sys.stdout, indent=2)
        print()
        return
    if not rows:
        print(f"no modules in {zoo_dir}")
        return
    print(f"{'name':28s} {'kind':9s} {'task':22s} {'backbone':20s} {'params':>8s} {'val':>7s}")
    for name, e in rows:
        score = e.get("score")
        print(f"{name:28s} {e.get('kind', '?'):9s} {str(e.get('task')):22s} {str(e.get('backbone')):20s} "
              f"{e.get('num_parameters', 0):8d} {'-' if score is None else format(score, '.4f'):>7}")


def run_show(args) -> int:
    manifest = existing_zoo(args.zoo).manifest(args.name).to_dict()
    manifest.get("training", {}).pop("history", None)
    print(json.dumps(manifest, indent=2))
    return 0


def run_verify(args) -> int:
    zoo = existing_zoo(args.zoo)
    if getattr(args, "repair", False):
        for action in zoo.repair():
            print(f"repaired: {action}")
    else:
        leftovers = zoo.leftovers()
        if leftovers:
            print(f"note: {len(leftovers)} leftover(s) of interrupted writes (harmless; "
                  "'vimw zoo verify --repair' removes them)", file=sys.stderr)
    problems = zoo.verify()
    if problems:
        for problem in problems:
            print(f"FAIL {problem}", file=sys.stderr)
        print(f"zoo {args.zoo}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"zoo {args.zoo}: {len(zoo)} module(s), all verified")
    return 0


def run_remove(args) -> int:
    existing_zoo(args.zoo).remove(args.name)
    print(f"removed {args.name}")
    return 0



def _hf_backbone_name(value: str) -> str:
    return value if value.startswith("hf:") else "hf:" + value


def run_export_peft(args) -> int:
    from vimw.backbones import create_backbone
    from vimw.errors import VimwError
    from vimw.interop import export_peft_lora

    zoo = existing_zoo(args.zoo)
    manifest = zoo.manifest(args.name)
    source = args.backbone or manifest.backbone.get("source") or manifest.backbone.get("arch")
    if not source:
        raise VimwError(f"module {args.name!r} records no backbone source; pass --backbone hf:<name or dir>")
    if args.backbone:
        source = _hf_backbone_name(args.backbone)
    out = export_peft_lora(zoo, args.name, create_backbone(source), args.out, overwrite=args.overwrite)
    sites = manifest.module.get("sites")
    print(f"exported {args.name} ({manifest.kind}, {f'{len(sites)} sites' if sites else 'all sites'}) "
          f"as a PEFT LoRA adapter in {out}")
    return 0


def run_import_peft(args) -> int:
    from pathlib import Path

    from vimw.backbones import create_backbone
    from vimw.errors import VimwError
    from vimw.interop import import_peft_lora
    from vimw.interop.peft import ADAPTER_CONFIG
    from vimw.io import read_json
    from vimw.zoo import Zoo

    adapter = Path(args.adapter)
    source = args.backbone
    if not source:
        config_file = adapter / ADAPTER_CONFIG
        base = read_json(config_file).get("base_model_name_or_path") if config_file.is_file() else None
        if not base:
            raise VimwError(f"{adapter}: the adapter names no base model; pass --backbone hf:<name or dir>")
        source = base
    name = args.name or default_module_name(adapter.expanduser().absolute().name)
    manifest = import_peft_lora(adapter, Zoo(args.zoo), name, create_backbone(_hf_backbone_name(source)),
                                overwrite=args.overwrite)
    print(f"added {manifest.name} (lora, rank {manifest.module['rank']}, {len(manifest.module['sites'])} sites, "
          f"{manifest.num_parameters} parameters) from {adapter}")
    return 0


def run_rank(args) -> int:
    from vimw.workflows.rank import rank_modules

    rows = rank_modules(existing_zoo(args.zoo), args.task, shots=args.shots, seed=args.seed,
                        max_images=args.max_images, image_size=args.image_size, skip_bad=args.skip_bad_images)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'rank':>4s} {'module':28s} {'task':22s} {'LogME':>8s}")
    for i, row in enumerate(rows, 1):
        print(f"{i:4d} {row['module']:28s} {str(row.get('task')):22s} {row['score']:8.4f}")
    return 0


def run_import(args) -> int:
    from vimw.zoo.share import import_modules, parse_renames

    report = import_modules(args.source, args.zoo, args.modules, parse_renames(args.rename))
    for old, new in report.imported:
        print(f"imported {old}" + (f" as {new}" if new != old else ""))
    for old, new in report.unchanged:
        print(f"unchanged {new} (already in {args.zoo} with the same weights)")
    print(f"{len(report.imported)} module(s) imported, {len(report.unchanged)} already present")
    return 0


def run_diff(args) -> int:
    from vimw.zoo.share import diff_zoos

    result = diff_zoos(args.a, args.b)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    for name in result["same"]:
        print(f"  same       {name}")
    for name in result["different"]:
        print(f"  DIFFERENT  {name} (same name, other weights)")
    for a, b in result["renamed"]:
        print(f"  renamed    {a} -> {b} (same weights)")
    for name in result["only_a"]:
        print(f"  only in A  {name}")
    for name in result["only_b"]:
        print(f"  only in B  {name}")
    if result["backbones"][0] and result["backbones"][1] and result["backbones"][0] != result["backbones"][1]:
        print("  the zoos are for different backbones")
    changed = len(result["different"]) + len(result["renamed"]) + len(result["only_a"]) + len(result["only_b"])
    print(f"{len(result['same'])} same, {changed} differ")
    return 0


def run_card(args) -> int:
    from vimw.zoo.share import write_cards

    for path in write_cards(existing_zoo(args.zoo), args.names or None):
        print(f"wrote {path}")
    return 0

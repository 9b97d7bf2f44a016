"""``vimw transfer``: TransMiter step by step (SPEC 2), plus the demo's weak -> strong step.

    vimw transfer extract  --weak efficientnet_lite0@64+invert --finetuned convpass|ZOO_DIR|MODEL_DIR \\
                           --task fmnist --base T-shirt/top Trouser Pullover Dress Coat --out runs/tm/source
    vimw transfer apply    --adapter runs/tm/source --to efficientnet_lite2@224 --out runs/tm/lite2
    vimw transfer refine   --adapter runs/tm/lite2 --out runs/tm/lite2-plus
    vimw transfer evaluate --adapter runs/tm/lite2-plus

Every step reads the previous step's adapter manifest (task, base classes, seed, image counts,
models, logit cache) so the image sets and the cached zero-shot logits are the same throughout.
``extract`` fine-tunes the weak model first (on the base-class shots, text rows frozen) unless
``--finetuned`` names a model directory written by an earlier ``extract``.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from vimw.io.names import FINETUNED_MANIFEST_FILE as FT_MANIFEST
from vimw.io.names import FINETUNED_WEIGHTS_FILE as FT_WEIGHTS
from vimw.io.names import ZOO_INDEX_FILE

DEFAULT_CACHE = "runs/transfer-cache"


STEPS = ("extract", "apply", "refine", "evaluate")


def expand_recipe_argv(argv: list[str]) -> list[str]:
    """``vimw transfer STEP --recipe FILE ...``: the recipe's ``transfer`` section as flags.

    Top-level keys of the section are options of ``extract``; the sub-sections
    ``apply``, ``refine`` and ``evaluate`` hold those steps' options (keys are option
    names, ``_`` for ``-``). They are placed before the user's own flags, so flags on
    the command line win.
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
    from vimw.modules import DEFAULT_MODULE_KIND
    from vimw.transfer.pipeline import FMNIST_BASE

    parser = commands.add_parser("transfer", help="TransMiter: extract an adaptation and move it to a stronger model")
    sub = parser.add_subparsers(dest="transfer_command", metavar="STEP")
    sub.required = True

    def common(p, data: bool = True) -> None:
        p.add_argument("--cache", default=None, help=f"zero-shot logit cache (default: the adapter's, or {DEFAULT_CACHE})")
        p.add_argument("--device", default="cpu")
        if data:
            p.add_argument("--task", default="fmnist")
            p.add_argument("--base", nargs="+", default=list(FMNIST_BASE), help="base class names (the rest are novel)")
            p.add_argument("--shots", type=int, default=16, help="labelled images per base class")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--data-seed", type=int, default=0, help="fixes the image sets (shared by all seeds)")
            p.add_argument("--num-extract", type=int, default=600, help="unlabeled images for extraction")
            p.add_argument("--num-align", type=int, default=300, help="unlabeled images for the alignment (prefix of the above)")
            p.add_argument("--num-test", type=int, default=1000)
            p.add_argument("-K", type=int, default=1024, help="logits: the task classes + K - C auxiliary words")

    p = sub.add_parser("extract", help="fine-tune the weak model (if needed) and extract an adapter, without labels")
    p.add_argument("--weak", default="efficientnet_lite0@64+invert", help="ARCH@SIZE[+invert] or hf:<CLIP name or dir>")
    p.add_argument("--finetuned", default=DEFAULT_MODULE_KIND,
                   help="a model dir from an earlier extract, a zoo dir (ViM aggregation) or a module kind")
    p.add_argument("--epochs", type=int, default=10, help="weak fine-tuning epochs (best epoch chosen on validation)")
    p.add_argument("--lr", type=float, nargs="+", default=[3e-3], help="weak fine-tuning learning rates to try")
    p.add_argument("--extraction-epochs", type=int, default=10)
    p.add_argument("--out", required=True)
    common(p)
    p.set_defaults(handler=run_extract)

    p = sub.add_parser("apply", help="move an adapter to another zero-shot model (no backpropagation)")
    p.add_argument("--adapter", required=True)
    p.add_argument("--to", required=True, help="target model: ARCH@SIZE[+invert] or hf:<CLIP name or dir>")
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 1.0, 10.0],
                   help="Procrustes lambda per image: one value, or candidates chosen by validation HM")
    p.add_argument("--out", required=True)
    common(p, data=False)
    p.set_defaults(handler=run_apply)

    p = sub.add_parser("refine", help="TransMiter+: refine a transferred adapter on the base-class shots")
    p.add_argument("--adapter", required=True)
    p.add_argument("--lr", type=float, nargs="+", default=[1e-3])
    p.add_argument("--epochs", type=int, nargs="+", default=[10])
    p.add_argument("--out", required=True)
    common(p, data=False)
    p.set_defaults(handler=run_refine)

    p = sub.add_parser("evaluate", help="base / novel / HM of an adapter on its model's test logits")
    p.add_argument("--adapter", required=True)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    common(p, data=False)
    p.set_defaults(handler=run_evaluate)


# -- helpers --------------------------------------------------------------------------------------
def _protocol_from(settings: dict[str, Any], **overrides):
    from vimw.transfer.pipeline import ProtocolConfig

    keys = {"task", "base", "shots", "data_seed", "num_extract", "num_align", "num_test", "K", "template", "weak"}
    cfg = ProtocolConfig(**{k: (tuple(v) if k == "base" else v) for k, v in settings.items() if k in keys})
    return replace(cfg, **overrides)


def _adapter_and_settings(directory: str):
    from vimw.transfer.adapter import load_adapter

    adapter, manifest = load_adapter(directory)
    settings = dict(manifest.get("settings") or {})
    if "protocol" not in settings:
        from vimw.errors import FormatError

        raise FormatError(f"{directory}: the adapter manifest has no protocol settings (not written by `vimw transfer`)")
    return adapter, manifest, settings


def save_finetuned(directory: Path, model, info: dict[str, Any]) -> None:
    from vimw.io import save_tensors, write_json

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"plugin.{k}": v.detach().cpu().contiguous() for k, v in model.plugin.state_dict().items()}
    tensors["feature_mean"] = model.feature_mean.detach().cpu()
    sha = save_tensors(directory / FT_WEIGHTS, tensors)
    write_json(directory / FT_MANIFEST, {**info, "weights_sha256": sha, "class_names": model.class_names,
                                         "template": model.template, "head": model.head_name})


def load_finetuned(directory: Path, device: str = "cpu"):
    from vimw.io import load_tensors, read_json
    from vimw.transfer.pipeline import load_zero_shot
    from vimw.transfer.protocol import FineTunedZeroShot, make_plugin

    info = read_json(directory / FT_MANIFEST)
    tensors = load_tensors(directory / FT_WEIGHTS, info["weights_sha256"])
    head = load_zero_shot(info["weak"], device=device)
    head.set_feature_mean(tensors["feature_mean"])
    plugin, _ = make_plugin(head.backbone, info["plugin_source"])
    plugin.load_state_dict({k[len("plugin."):]: v for k, v in tensors.items() if k.startswith("plugin.")})
    return FineTunedZeroShot(head, info["class_names"], plugin, info["template"]).to(device), info


# -- steps ----------------------------------------------------------------------------------------
def run_extract(args) -> int:
    from vimw.transfer.adapter import save_adapter
    from vimw.transfer.cache import LogitCache
    from vimw.transfer.extraction import ExtractionConfig, extract_adapter
    from vimw.transfer.pipeline import ProtocolConfig, load_zero_shot, make_sets, seed_split, zero_shot_pass
    from vimw.transfer.protocol import FineTunedZeroShot, finetune_zero_shot, make_plugin

    out = Path(args.out)
    cache_dir = args.cache or DEFAULT_CACHE
    cfg = ProtocolConfig(task=args.task, base=tuple(args.base), weak=args.weak, shots=args.shots, data_seed=args.data_seed,
                         num_extract=args.num_extract, num_align=args.num_align, num_test=args.num_test, K=args.K,
                         device=args.device)
    sets, ids = make_sets(cfg)
    weak = load_zero_shot(cfg.weak, device=args.device)
    zs = zero_shot_pass(weak, "weak", cfg, LogitCache(cache_dir), sets, ids, ("extract",))
    started = time.perf_counter()
    finetuned = Path(args.finetuned)
    if (finetuned / FT_MANIFEST).exists():
        model, ft_info = load_finetuned(finetuned, args.device)
        if model.head_name != weak.name:
            print(f"note: the fine-tuned model was calibrated as {model.head_name}, the weak model here is {weak.name}")
        print(f"teacher: {finetuned} (val accuracy on base classes {ft_info.get('best_val_accuracy')})")
    else:
        train_idx, val_idx = seed_split(sets["pool_labels"], sets["base"], cfg, args.seed)
        base_val = val_idx[torch_isin(sets["pool_labels"][val_idx], sets["base"])]
        plugin, plugin_info = make_plugin(weak.backbone, args.finetuned, seed=args.seed)
        model = FineTunedZeroShot(weak, sets["class_names"], plugin, cfg.template).to(args.device)
        print(f"fine-tuning {weak.name} with {plugin_info['plugin']} on {len(train_idx)} base-class images ...")
        model, ft = finetune_zero_shot(model, sets["pool_images"][train_idx], sets["pool_labels"][train_idx],
                                       sets["pool_images"][base_val], sets["pool_labels"][base_val],
                                       classes=sets["base"], lrs=args.lr, epochs=args.epochs, seed=args.seed)
        ft_info = {"weak": cfg.weak, "plugin_source": args.finetuned, **plugin_info,
                   **{k: v for k, v in ft.items() if k != "history"}, "task": cfg.task, "base": list(cfg.base),
                   "seed": args.seed}
        save_finetuned(out / "teacher", model, ft_info)
        print(f"  base-class val accuracy {ft['best_val_accuracy']:.4f} (lr {ft['best_lr']:g}, epoch {ft['best_epoch']}); "
              f"saved to {out / 'teacher'}")
    teacher = model.predict(sets["extract_images"])  # no labels: the unlabeled extraction set
    adapter, history = extract_adapter(zs["extract"], teacher,
                                       config=ExtractionConfig(epochs=args.extraction_epochs, seed=args.seed))
    settings = {"protocol": cfg.to_dict(), **cfg.to_dict(), "seed": args.seed, "cache": str(Path(cache_dir).resolve()),
                "model": weak.name, "model_spec": cfg.weak, "weak_model": weak.name,
                "extraction": {"epochs": args.extraction_epochs, "final_loss": history[-1]["loss"],
                               "seconds": round(time.perf_counter() - started, 2)}}
    save_adapter(adapter, out, source_model=weak.name, aux_words_sha256=sets["aux_sha"], template=cfg.template,
                 class_names=sets["k_names"], settings=settings)
    print(f"adapter (K={adapter.num_logits}, C={adapter.num_classes}) extracted from {len(teacher)} unlabeled images "
          f"-> {out}")
    return 0


def torch_isin(labels, classes):
    import torch

    return torch.isin(labels, torch.as_tensor(list(classes)))


def _val_hm(adapter, logits, labels, sets) -> float:
    import torch

    from vimw.transfer.protocol import base_novel_scores

    with torch.no_grad():
        return base_novel_scores(adapter(logits)[:, : adapter.num_classes], labels, sets["base"], sets["novel"])["hm"]


def run_apply(args) -> int:
    from vimw.transfer.adapter import save_adapter
    from vimw.transfer.cache import LogitCache
    from vimw.transfer.extraction import transfer_adapter
    from vimw.transfer.pipeline import load_zero_shot, make_sets, seed_split, zero_shot_pass

    adapter, manifest, settings = _adapter_and_settings(args.adapter)
    if adapter.rotation is not None:
        print("note: the adapter is already transferred; the rotations compose")
    cfg = _protocol_from(settings["protocol"], device=args.device)
    cache = LogitCache(args.cache or settings["cache"])
    sets, ids = make_sets(cfg)
    # The source of the alignment is the model the adapter serves now (the weak model, or the
    # previous target of an already transferred adapter: the rotations then compose).
    source = load_zero_shot(settings["model_spec"], device=args.device)
    if settings["model_spec"] == cfg.weak:
        source_zs = zero_shot_pass(source, "weak", cfg, cache, sets, ids, ("extract",))["extract"][: cfg.num_align]
    else:
        source_zs = zero_shot_pass(source, "strong", cfg, cache, sets, ids, ("align",))["align"]
    target = load_zero_shot(args.to, device=args.device)
    target_zs = zero_shot_pass(target, "strong", cfg, cache, sets, ids, ("align", "pool"))
    started = time.perf_counter()
    _, val_idx = seed_split(sets["pool_labels"], sets["base"], cfg, settings["seed"])
    scores = {}
    for lam in args.lambdas:
        moved = transfer_adapter(adapter, source_zs, target_zs["align"], lam)
        scores[lam] = _val_hm(moved, target_zs["pool"][val_idx], sets["pool_labels"][val_idx], sets) if len(args.lambdas) > 1 else None
    lam = args.lambdas[0] if len(args.lambdas) == 1 else max(scores, key=lambda v: (scores[v], v))
    moved = transfer_adapter(adapter, source_zs, target_zs["align"], lam)
    settings.update({"model": target.name, "model_spec": args.to, "target_model": target.name,
                     "transfer": {"lambda_per_image": lam, "val_hm": {str(k): v for k, v in scores.items()},
                                  "num_align": cfg.num_align, "seconds": round(time.perf_counter() - started, 2)}})
    save_adapter(moved, args.out, source_model=manifest["source_model"], target_model=target.name,
                 aux_words_sha256=manifest.get("aux_words_sha256"), template=manifest["template"],
                 class_names=manifest.get("class_names"), settings=settings)
    print(f"transferred to {target.name} without backpropagation (lambda/image {lam:g}) -> {args.out}")
    return 0


def _adapter_with_logits(args, part: str):
    """A saved adapter, its protocol, and its model's cached zero-shot logits on one image set."""
    from vimw.transfer.cache import LogitCache
    from vimw.transfer.pipeline import load_zero_shot, make_sets, zero_shot_pass

    adapter, manifest, settings = _adapter_and_settings(args.adapter)
    cfg = _protocol_from(settings["protocol"], device=args.device)
    cache = LogitCache(args.cache or settings["cache"])
    sets, ids = make_sets(cfg)
    model = load_zero_shot(settings["model_spec"], device=args.device)
    role = "weak" if settings["model_spec"] == cfg.weak else "strong"
    logits = zero_shot_pass(model, role, cfg, cache, sets, ids, (part,))[part]
    return adapter, manifest, settings, cfg, sets, model, logits


def run_refine(args) -> int:
    from vimw.transfer.adapter import save_adapter
    from vimw.transfer.extraction import RefineConfig, refine_adapter
    from vimw.transfer.pipeline import seed_split

    adapter, manifest, settings, cfg, sets, _, pool = _adapter_with_logits(args, "pool")
    train_idx, val_idx = seed_split(sets["pool_labels"], sets["base"], cfg, settings["seed"])
    base_val = val_idx[torch_isin(sets["pool_labels"][val_idx], sets["base"])]
    y = sets["pool_labels"]
    best = (_val_hm(adapter, pool[val_idx], y[val_idx], sets), None, 0, adapter)
    for lr in args.lr:
        for epochs in args.epochs:
            refined, _ = refine_adapter(adapter, pool[train_idx], y[train_idx], pool[base_val], y[base_val],
                                        classes=sets["base"], config=RefineConfig(epochs=epochs, lr=lr, batch_size=32,
                                                                                  seed=settings["seed"]))
            hm = _val_hm(refined, pool[val_idx], y[val_idx], sets)
            print(f"  lr {lr:g}, {epochs} epochs: validation HM {hm:.4f}")
            if hm > best[0]:
                best = (hm, lr, epochs, refined)
    settings["refine"] = {"lr": best[1], "epochs": best[2], "val_hm": best[0], "shots": cfg.shots}
    save_adapter(best[3], args.out, source_model=manifest["source_model"], target_model=manifest.get("target_model"),
                 aux_words_sha256=manifest.get("aux_words_sha256"), template=manifest["template"],
                 class_names=manifest.get("class_names"), settings=settings)
    print(f"TransMiter+ (lr {best[1]}, {best[2]} epochs; validation HM {best[0]:.4f}) -> {args.out}")
    return 0


def run_evaluate(args) -> int:
    import torch

    from vimw.transfer.protocol import base_novel_scores

    adapter, manifest, settings, cfg, sets, model, test = _adapter_with_logits(args, "test")
    c = adapter.num_classes
    with torch.no_grad():
        rows = {"zero-shot": base_novel_scores(test[:, :c], sets["test_labels"], sets["base"], sets["novel"]),
                "adapter": base_novel_scores(adapter(test)[:, :c], sets["test_labels"], sets["base"], sets["novel"])}
    result = {"model": model.name, "adapter": str(args.adapter), "transferred": adapter.rotation is not None,
              "base_classes": [sets["class_names"][i] for i in sets["base"]],
              "novel_classes": [sets["class_names"][i] for i in sets["novel"]], "test_images": len(test), "scores": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{model.name}, {len(test)} test images")
        for name, r in rows.items():
            print(f"  {name:10s} base {r['base']:.4f}  novel {r['novel']:.4f}  HM {r['hm']:.4f}")
    return 0


# -- the demo step ---------------------------------------------------------------------------------
def run_demo_step(workdir: Path, seed: int = 0) -> None:
    """The weak -> strong story on small image counts (a few minutes; the logits are cached)."""
    from vimw.transfer.pipeline import ProtocolConfig, format_table, run_protocol

    workdir = Path(workdir)
    cfg = ProtocolConfig(num_extract=400, num_align=150, num_test=300, weak_epochs=6, weak_lrs=(3e-3,),
                         strong_ft=False, refine_lrs=(1e-3,), refine_epochs=(10,), extraction_epochs=10)
    zoo = workdir / "zoo"
    if zoo.is_dir() and (zoo / ZOO_INDEX_FILE).exists():
        cfg = replace(cfg, plugin=str(zoo))  # the ViM chain: aggregate the demo zoo for the teacher
    started = time.perf_counter()
    result = run_protocol(cfg, workdir / "transfer-cache", seeds=(seed,), log=lambda m: print(m, flush=True))
    table = format_table(result["summary"])
    print(f"\n  base: {', '.join(result['split']['base'])}; novel: {', '.join(result['split']['novel'])}; "
          f"{result['counts']['test']} test images, {cfg.num_extract} unlabeled (alignment {cfg.num_align})")
    print(table)
    from vimw.io import atomic_write_text, write_json

    atomic_write_text(workdir / "transfer_results.md", table + "\n")
    write_json(workdir / "transfer_results.json", result)
    print(f"  transfer step finished in {time.perf_counter() - started:.0f} s")

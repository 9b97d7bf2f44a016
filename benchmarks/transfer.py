"""TransMiter base-to-novel benchmark: a weak zero-shot model -> a stronger one on Fashion-MNIST.

Rows, under three row sets: every knob chosen on validation images of all classes (protocol
a), on base-class validation images only (protocol b: novel labels never seen), and with fixed
blends (TransMiter alpha = 1, proxy alpha = 1, ensemble alpha = 0.5; lambda and refinement as
in b). Columns: base, novel, HM on the test images (mean ± std over seeds, and per seed) and
the seconds each method needed beyond the shared zero-shot logit cache; TransMiter's seconds
count the strong model's passes over the alignment and validation images at the cost per
image measured in the same run.

    python benchmarks/transfer.py                                   # 3 seeds, CPU
    python benchmarks/transfer.py --pairs                           # zero-shot of candidate pairs only
    python benchmarks/transfer.py --weak efficientnet_lite0@96+invert --strong efficientnet_lite2@224 \\
        --base T-shirt/top Trouser Pullover Dress Coat
    python benchmarks/transfer.py --task folder:DIR --base CLASS... --data-seed 1 --seeds 100 101

Any split (``--base``, default the first half of the task's classes), any task vimw knows
(``--task``, e.g. ``folder:DIR``), and the image sets drawn from ``--data-seed``. Torch runs on
``VIMW_THREADS`` threads (default 1) with deterministic algorithms: a seed gives the same rows
whether the logit cache is filled or not. The many-splits benchmark under a fixed protocol is
``benchmarks/transfer_splits.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402

PAIR_WEAK = ("efficientnet_lite0@64+invert", "efficientnet_lite0@96+invert", "efficientnet_lite0@128+invert")
PAIR_STRONG = ("efficientnet_lite2@160", "efficientnet_lite2@224", "efficientnet_lite2@224+invert")


def _pairs(args, data) -> int:
    from vimw.transfer.data import make_sets
    from vimw.transfer.protocol import measure_pairs

    rows = measure_pairs(data, args.pair_weak, args.pair_strong, args.cache, device=args.device,
                         log=lambda m: print(m, flush=True))
    split = make_sets(data).split_names()
    lines = ["| role | model | base | novel | HM | ms per image |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['role']} | `{r['model']}` | {100 * r['base']:.1f} | {100 * r['novel']:.1f} | "
                     f"{100 * r['hm']:.1f} | {1000 * r['seconds_per_image']:.0f} |")
    md = "\n".join([
        "# Zero-shot accuracy of candidate weak / strong models (validation pool, never test images)", "",
        f"{_title(data.task)}, base classes: {', '.join(split['base'])}; {data.pool_per_class} labelled pool images "
        f"per class (the images each seed draws its shots and validation images from); chance is "
        f"{100 / len(split['base']):.0f}% per split.", "",
        *lines])
    write_results(args.name + "_pairs", {"rows": rows, "data": data.to_dict()}, md)
    print(md)
    return 0


def _title(task: str) -> str:
    return "Fashion-MNIST" if task == "fmnist" else task


def _merge(paths: list[str]) -> dict:
    """One result from per-seed runs of the same settings (run in parallel processes)."""
    import json

    from vimw.transfer.protocol import headline_protocol, summarise

    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    for part in parts[1:]:
        if part["config"] != first["config"]:
            raise SystemExit(f"cannot merge runs with different settings: {paths}")
    per_seed = [r for part in parts for r in part["per_seed"]]
    ratios: dict[str, dict[str, list[float]]] = {}
    for part in parts:
        for protocol, values in part["plus_over_strong_ft"].items():
            for key, value in values.items():
                ratios.setdefault(protocol, {}).setdefault(key, []).append(value)
    summaries = summarise(per_seed)
    protocols = first["config"]["protocols"]
    first = {k: v for k, v in first.items() if k not in ("command", "machine")}  # this merge's own are written
    return {**first, "config": {**first["config"], "task": first["config"]["data"]["task"]},
            "seeds": [r["seed"] for r in per_seed], "per_seed": per_seed, "summaries": summaries,
            "summary": summaries[headline_protocol(protocols)],
            "plus_over_strong_ft": {p: {k: sum(v) / len(v) for k, v in by.items()} for p, by in ratios.items()},
            "merged_from": {p: part["command"] for p, part in zip(paths, parts)},
            "seconds": max(part["seconds"] for part in parts)}


def _parser(s) -> argparse.ArgumentParser:
    """The options; every default is ``TransferSettings``' (``s``)."""
    d, t = s.data, s.teacher
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weak", default=s.weak)
    parser.add_argument("--strong", default=s.strong)
    parser.add_argument("--plugin", default=s.finetuned, help="module kind, or a zoo directory (ViM aggregation)")
    parser.add_argument("--task", default=d.task, help="any task vimw knows, e.g. fmnist or folder:DIR")
    parser.add_argument("--base", nargs="+", default=list(d.base), help="default: the first half of the task's classes")
    parser.add_argument("--data-seed", type=int, default=d.data_seed, help="draws the image sets")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--num-unlabeled", type=int, default=d.num_unlabeled)
    parser.add_argument("--num-align", type=int, default=d.num_align)
    parser.add_argument("--num-test", type=int, default=d.num_test)
    parser.add_argument("--views", type=int, default=d.views)
    parser.add_argument("--K", type=int, default=d.K, help="zero-shot logits per image: task classes + auxiliary")
    parser.add_argument("--epochs", type=int, default=t.epochs, help="teacher and strong fine-tuning epochs")
    parser.add_argument("--consistency", type=float, default=t.consistency)
    parser.add_argument("--refine-epochs", type=int, default=s.refine.epochs)
    parser.add_argument("--no-strong-ft", action="store_true")
    parser.add_argument("--pairs", action="store_true", help="only measure candidate pairs' zero-shot accuracy")
    parser.add_argument("--pair-weak", nargs="+", default=list(PAIR_WEAK))
    parser.add_argument("--pair-strong", nargs="+", default=list(PAIR_STRONG))
    parser.add_argument("--cache", default=s.cache)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="transfer")
    parser.add_argument("--merge", nargs="+", metavar="RESULT_JSON",
                        help="merge per-seed result files of this script (same settings) into one table")
    return parser


TITLES = {"all": "(a) every choice on validation images of all classes (HM)",
          "base": "(b) every choice on base-class validation images only (novel labels never seen)",
          "fixed": "fixed blends: TransMiter alpha = 1, proxy alpha = 1, ensemble alpha = 0.5 (lambda, refinement as in b)"}


def _markdown(result: dict, cfg, merged: bool) -> str:
    from vimw.transfer.protocol import format_table

    data, seeds = cfg.data, result["seeds"]
    sections = []
    for protocol, summary in result["summaries"].items():
        sections += [f"## {TITLES.get(protocol, protocol)}", "", format_table(summary), ""]
    ratio = result["plus_over_strong_ft"]
    return "\n".join([
        f"# TransMiter base-to-novel on {_title(data.task)} ({len(seeds)} seeds: {seeds})", "",
        f"Weak: `{result['models']['weak']}`; strong: `{result['models']['strong']}`; teacher plug-in: `{cfg.plugin}`, "
        f"consistency weight {cfg.teacher.consistency:g}.",
        f"Base classes: {', '.join(result['split']['base'])}. Novel classes: {', '.join(result['split']['novel'])}.",
        f"Images: {data.shots} shots per base class; {data.val_per_class} validation images per class; "
        f"{data.num_unlabeled} unlabeled images for extraction (weak model only) in {data.views} views; alignment on "
        f"the training shots' images ({data.views} views, labels unused) + {data.num_align} unlabeled images; "
        f"{data.num_test} test images; K = {data.K}.", "",
        *sections,
        "Seconds: the teacher = its fine-tuning; transferred = extraction (the teacher's and the weak model's passes "
        "over the extraction images + distillation) + both models' passes over the alignment images and the strong "
        "model's over the training views and validation images (timed in each seed's run) + the lambda choice; "
        "TransMiter+ adds the refinement; proxy / ensemble = the alpha choice only, but they need the fine-tuned weak "
        "model on every image at inference, TransMiter needs only the strong model; strong fine-tuned = training "
        "with its per-epoch validation, every learning rate.",
        "TransMiter+ time / strong fine-tuning time: "
        + "; ".join(f"{p}: " + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in by.items())
                    for p, by in ratio.items()) + ".",
        f"Total wall time: {result['seconds']:.0f} s" + (" (the longest of the merged per-seed processes)."
                                                         if merged else "."),
    ])


def main(argv: list[str] | None = None) -> int:
    from transfer_splits import deterministic

    from vimw.transfer.protocol import ProtocolConfig, run_protocol
    from vimw.transfer.settings import TransferSettings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    deterministic(int(os.environ.get("VIMW_THREADS", "1")))
    s = TransferSettings()
    args = _parser(s).parse_args(argv)
    data = replace(s.data, task=args.task, base=tuple(args.base), data_seed=args.data_seed,
                   num_unlabeled=args.num_unlabeled, num_align=args.num_align, num_test=args.num_test,
                   views=args.views, K=args.K)
    if args.pairs:
        return _pairs(args, data)
    base = ProtocolConfig()
    cfg = replace(base, data=data, weak=args.weak, strong=args.strong, plugin=args.plugin,
                  teacher=replace(base.teacher, epochs=args.epochs, consistency=args.consistency),
                  refine=replace(base.refine, epochs=args.refine_epochs), strong_ft=not args.no_strong_ft,
                  device=args.device)
    if args.merge:
        result = _merge(args.merge)
    else:
        result = run_protocol(cfg, args.cache, seeds=args.seeds, log=lambda m: print(m, flush=True))
    md = _markdown(result, cfg, merged=bool(args.merge))
    json_path, md_path = write_results(args.name, result, md)
    print(md)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

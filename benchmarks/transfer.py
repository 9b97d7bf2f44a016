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
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402

PAIR_WEAK = ("efficientnet_lite0@64+invert", "efficientnet_lite0@96+invert", "efficientnet_lite0@128+invert")
PAIR_STRONG = ("efficientnet_lite2@160", "efficientnet_lite2@224", "efficientnet_lite2@224+invert")


def _pairs(args, data) -> int:
    from vimw.transfer.protocol import measure_pairs

    rows = measure_pairs(data, args.pair_weak, args.pair_strong, args.cache, device=args.device,
                         log=lambda m: print(m, flush=True))
    lines = ["| role | model | base | novel | HM | ms per image |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['role']} | `{r['model']}` | {100 * r['base']:.1f} | {100 * r['novel']:.1f} | "
                     f"{100 * r['hm']:.1f} | {1000 * r['seconds_per_image']:.0f} |")
    md = "\n".join([
        "# Zero-shot accuracy of candidate weak / strong models (validation pool, never test images)", "",
        f"Fashion-MNIST, base classes: {', '.join(data.base)}; {data.pool_per_class} labelled pool images per class "
        f"(the images each seed draws its shots and validation images from); chance is {100 / 5:.0f}% per split.", "",
        *lines])
    write_results(args.name + "_pairs", {"rows": rows, "data": data.to_dict()}, md)
    print(md)
    return 0


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
    ratios: dict[str, list[float]] = {}
    for part in parts:
        for key, value in part["plus_over_strong_ft"].items():
            ratios.setdefault(key, []).append(value)
    summaries = summarise(per_seed)
    protocols = first["config"]["protocols"]
    first = {k: v for k, v in first.items() if k not in ("command", "machine")}  # this merge's own are written
    return {**first, "config": {**first["config"], "task": first["config"]["data"]["task"]},
            "seeds": [r["seed"] for r in per_seed], "per_seed": per_seed, "summaries": summaries,
            "summary": summaries[headline_protocol(protocols)],
            "plus_over_strong_ft": {k: sum(v) / len(v) for k, v in ratios.items()},
            "merged_from": {p: part["command"] for p, part in zip(paths, parts)},
            "seconds": max(part["seconds"] for part in parts)}


def main(argv: list[str] | None = None) -> int:
    import torch

    from vimw.transfer.protocol import (DEFAULT_STRONG, DEFAULT_WEAK, LABELS, DataConfig, ProtocolConfig,
                                        format_table, run_protocol)
    from vimw.transfer.steps import RefineConfig
    from vimw.transfer.teacher import TeacherConfig

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(int(os.environ.get("VIMW_THREADS", "1")))
    d, t = DataConfig(), TeacherConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weak", default=DEFAULT_WEAK)
    parser.add_argument("--strong", default=DEFAULT_STRONG)
    parser.add_argument("--plugin", default=ProtocolConfig.plugin, help="module kind, or a zoo directory (ViM aggregation)")
    parser.add_argument("--base", nargs="+", default=list(d.base))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--num-unlabeled", type=int, default=d.num_unlabeled)
    parser.add_argument("--num-align", type=int, default=d.num_align)
    parser.add_argument("--num-test", type=int, default=d.num_test)
    parser.add_argument("--views", type=int, default=d.views)
    parser.add_argument("--K", type=int, default=d.K, help="zero-shot logits per image: task classes + auxiliary")
    parser.add_argument("--epochs", type=int, default=t.epochs, help="teacher and strong fine-tuning epochs")
    parser.add_argument("--consistency", type=float, default=t.consistency)
    parser.add_argument("--refine-epochs", type=int, default=RefineConfig().epochs)
    parser.add_argument("--no-strong-ft", action="store_true")
    parser.add_argument("--pairs", action="store_true", help="only measure candidate pairs' zero-shot accuracy")
    parser.add_argument("--pair-weak", nargs="+", default=list(PAIR_WEAK))
    parser.add_argument("--pair-strong", nargs="+", default=list(PAIR_STRONG))
    parser.add_argument("--cache", default="runs/transfer-cache")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="transfer")
    parser.add_argument("--merge", nargs="+", metavar="RESULT_JSON",
                        help="merge per-seed result files of this script (same settings) into one table")
    args = parser.parse_args(argv)

    data = DataConfig(base=tuple(args.base), num_unlabeled=args.num_unlabeled, num_align=args.num_align,
                      num_test=args.num_test, views=args.views, K=args.K)
    if args.pairs:
        return _pairs(args, data)
    base = ProtocolConfig()
    cfg = replace(base, data=data, weak=args.weak, strong=args.strong, plugin=args.plugin,
                  teacher=replace(base.teacher, epochs=args.epochs, consistency=args.consistency),
                  refine=replace(base.refine, epochs=args.refine_epochs), strong_ft=not args.no_strong_ft,
                  device=args.device)
    started = time.perf_counter()
    if args.merge:
        result = _merge(args.merge)
    else:
        result = run_protocol(cfg, args.cache, seeds=args.seeds, log=lambda m: print(m, flush=True))
    args.seeds = result["seeds"]
    titles = {"all": "(a) every choice on validation images of all classes (HM)",
              "base": "(b) every choice on base-class validation images only (novel labels never seen)",
              "fixed": "fixed blends: TransMiter alpha = 1, proxy alpha = 1, ensemble alpha = 0.5 (lambda, refinement as in b)"}
    sections = []
    for protocol, summary in result["summaries"].items():
        sections += [f"## {titles.get(protocol, protocol)}", "", format_table(summary), ""]
    ratio = result["plus_over_strong_ft"]
    md = "\n".join([
        f"# TransMiter base-to-novel on Fashion-MNIST ({len(args.seeds)} seeds: {args.seeds})", "",
        f"Weak: `{result['models']['weak']}`; strong: `{result['models']['strong']}`; teacher plug-in: `{args.plugin}`, "
        f"consistency weight {cfg.teacher.consistency:g}.",
        f"Base classes: {', '.join(result['split']['base'])}. Novel classes: {', '.join(result['split']['novel'])}.",
        f"Images: {data.shots} shots per base class; {data.val_per_class} validation images per class; "
        f"{data.num_unlabeled} unlabeled images for extraction (weak model only) in {data.views} views; alignment on "
        f"the training shots' images ({data.views} views, labels unused) + {data.num_align} unlabeled images; "
        f"{data.num_test} test images; K = {data.K}.", "",
        *sections,
        "Seconds: the teacher = its fine-tuning; transferred = extraction (the teacher's pass over the unlabeled "
        "views + distillation) + the strong model's passes over the alignment and validation images (timed in "
        f"each seed's run: {1000 * result['strong_seconds_per_image']:.0f} ms per image on average) + "
        "the lambda choice; TransMiter+ "
        "adds the refinement; proxy / ensemble = the alpha choice only, but they need the fine-tuned weak model on "
        "every image at inference, TransMiter needs only the strong model; strong fine-tuned = training with its "
        "per-epoch validation.",
        "TransMiter+ time / strong fine-tuning time: "
        + ", ".join(f"{p}: {v:.3f}" for p, v in ratio.items()) + ".",
        f"Total wall time: {result['seconds']:.0f} s" + (" (the longest of the merged per-seed processes)."
                                                         if args.merge else "."),
    ])
    del LABELS
    json_path, md_path = write_results(args.name, result, md)
    print(md)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""TransMiter base-to-novel benchmark (SPEC 2.6): weak (EfficientNet-Lite0 @ 64 px) -> strong
(EfficientNet-Lite2 @ 224 px) on Fashion-MNIST, 5 base / 5 novel classes, 16 shots per base
class, 3 seeds.

Rows: weak zero-shot, weak fine-tuned (the teacher: a plug-in on the weak backbone trained on
the base classes with the text rows frozen), strong zero-shot, the extracted adapter on the
weak model, TransMiter transferred (no backprop), TransMiter+ (refined on the base shots),
proxy and ensemble (logit arithmetic), strong fine-tuned the same way as the weak model.
Columns: base, novel, HM (test), and the seconds each method needed beyond the shared cache of
zero-shot logits (the one pass of each zero-shot model over each image set).

    python benchmarks/transfer.py                 # CPU, ~25 min on 2 cores
    python benchmarks/transfer.py --device cuda   # the same on a GPU
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from vimw.transfer.pipeline import FMNIST_BASE, ProtocolConfig, format_table, run_protocol

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weak", default="efficientnet_lite0@64+invert")
    parser.add_argument("--strong", default="efficientnet_lite2@224")
    parser.add_argument("--plugin", default=ProtocolConfig.plugin, help="module kind, or a zoo directory (ViM aggregation)")
    parser.add_argument("--base", nargs="+", default=list(FMNIST_BASE))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--num-extract", type=int, default=600)
    parser.add_argument("--num-align", type=int, default=300)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--weak-epochs", type=int, default=10)
    parser.add_argument("--strong-epochs", type=int, default=10)
    parser.add_argument("--no-strong-ft", action="store_true")
    parser.add_argument("--cache", default="runs/transfer-cache")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="transfer")
    args = parser.parse_args(argv)

    cfg = ProtocolConfig(
        base=tuple(args.base), weak=args.weak, strong=args.strong, plugin=args.plugin,
        num_extract=args.num_extract, num_align=args.num_align, num_test=args.num_test,
        weak_epochs=args.weak_epochs, weak_lrs=(3e-3,), strong_epochs=args.strong_epochs, strong_lrs=(3e-3,),
        strong_ft=not args.no_strong_ft, refine_lrs=(1e-3,), refine_epochs=(10,), device=args.device,
    )
    started = time.perf_counter()
    result = run_protocol(cfg, args.cache, seeds=args.seeds, log=lambda m: print(m, flush=True))
    table = format_table(result["summary"])
    counts = result["counts"]
    ratio = result["transfer_over_strong_ft_ratio"]
    md = "\n".join([
        f"# TransMiter base-to-novel on Fashion-MNIST ({len(args.seeds)} seeds: {args.seeds})",
        "",
        f"Weak: `{result['models']['weak']}`; strong: `{result['models']['strong']}`; fine-tuning plug-in: `{args.plugin}`.",
        f"Base classes: {', '.join(result['split']['base'])}. Novel classes: {', '.join(result['split']['novel'])}.",
        f"Images: {counts['train_shots_per_base_class']} shots per base class for training; "
        f"{counts['val_per_class']} validation images per class (all classes; model selection only); "
        f"{counts['unlabeled_extraction']} unlabeled training images for extraction (weak model only), the first "
        f"{counts['unlabeled_alignment']} of them for the alignment (both models); {counts['test']} test images; K = {counts['K']}.",
        "",
        table,
        "",
        f"Shared zero-shot passes (cached, once for all seeds): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result["shared_seconds"].items()) + ".",
        "Seconds: weak fine-tuned = training + its passes over the validation and test images; transferred = "
        "extraction (the teacher's pass over the unlabeled images + KD) + alignment + lambda choice; TransMiter+ adds "
        "the refinement; proxy / ensemble = the alpha choice only, but they need the fine-tuned weak model's logits "
        "on every test image at inference (counted in the weak fine-tuned row), TransMiter needs only the strong "
        "model's zero-shot logits; strong fine-tuned = training + its pass over the test images.",
        (f"Transfer time / strong fine-tuning time: {ratio:.3f}." if ratio is not None else ""),
        f"Total wall time: {time.perf_counter() - started:.0f} s.",
    ])
    json_path, md_path = write_results(args.name, result, md)
    print(md)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

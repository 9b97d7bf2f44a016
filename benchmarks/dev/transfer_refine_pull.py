"""Development only (issue 24): does a pull toward the strong model's zero-shot keep TransMiter+'s
novel classes where the evaluation found them lost?

The evaluation of protocol v2 (`results/transfer-splits.md`) has TransMiter+ above strong
fine-tuning on base accuracy and below it on novel accuracy: refinement is pulled toward the
transferred adapter, whose novel accuracy is at or below the strong zero-shot's, while strong
fine-tuning is pulled toward the strong zero-shot itself (PromptSRC's consistency). This runs
refinement with both pulls, ``distill`` x KL(transferred || refined) over all K columns and
``zero_shot`` x KL(strong zero-shot || refined) over the C task columns, on the protocol's
DEVELOPMENT splits, seeds and images only (held-out training images, no test image), at the
protocol's chosen stage-1 defaults. Nothing here is an evaluation result; a setting it favours
enters a new protocol version before any evaluation run.

    python benchmarks/dev/transfer_refine_pull.py            # run the missing units, then summarise
    python benchmarks/dev/transfer_refine_pull.py --report   # only the summary
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import RESULTS, command_line  # noqa: E402
from transfer_dev import _scored, _setting, _shared, run_dev_study  # noqa: E402

OUT = RESULTS / "dev" / "transfer-refine-pull-units"
SUMMARY = RESULTS / "dev" / "transfer-refine-pull.md"
# (distill, zero_shot): the v2 recipe first, then the zero-shot pull added to it, then alone
GRID = [(3.0, 0.0), (3.0, 0.3), (3.0, 1.0), (3.0, 3.0), (3.0, 10.0), (0.0, 1.0), (0.0, 3.0)]


def run_unit(protocol: dict[str, Any], split: str, seed: int) -> dict[str, Any]:
    from vimw.transfer.data import seed_split
    from vimw.transfer.protocol import SeedRun, align, extract, refine, train_teacher, transfer
    from vimw.transfer.steps import adapter_logits

    dev = protocol["development"]
    cfg, sh = _shared(protocol, dev["pair"], dev["splits"][split], _setting(protocol), protocol["cache"])
    run = SeedRun(cfg, sh, seed, seed_split(sh.sets, seed), lambda m: print(m, flush=True), timed=False)
    teacher = train_teacher(run)
    use = cfg.image_uses()[0]
    adapter, _ = extract(run, teacher, use, record=False)
    alignment = align(run, use, record=False)
    strong_test = run.logits("strong", "test")
    rows = []
    for p in ("all", "base"):
        moved, _, _ = transfer(run, p, adapter, alignment)
        transferred = _scored(run, adapter_logits(moved, strong_test))
        for distill, zero_shot in GRID:
            plus, secs, info = refine(run, p, moved, alignment, replace(cfg.refine, distill=distill, zero_shot=zero_shot))
            rows.append({"protocol": p, "distill": distill, "zero_shot": zero_shot, "lr": info["lr"],
                         "epoch": info["epoch"], "seconds": secs, "transferred": transferred,
                         **_scored(run, adapter_logits(plus, strong_test))})
            print(f"  {split} s{seed} [{p}] distill {distill:g} zero-shot {zero_shot:g}: lr {info['lr']:g} "
                  f"epoch {info['epoch']} base {rows[-1]['base']:.3f} novel {rows[-1]['novel']:.3f} "
                  f"HM {rows[-1]['hm']:.3f}", flush=True)
    return {"split": split, "seed": seed, "rows": rows, "strong_zero_shot": _scored(run, strong_test)}


def summarise(units: list[dict[str, Any]]) -> str:
    lines = ["# TransMiter+ with a pull toward the strong zero-shot: DEVELOPMENT runs (not results)", "",
             f"Command: `{command_line()}`", "",
             f"{len(units)} units (development splits x seeds 100, 101, held-out training images), both "
             "validation protocols; base / novel / HM in %, mean over units and protocols; the paired "
             "difference in HM against the v2 recipe (distill 3, zero-shot 0) with its 95% t interval "
             "over the units' protocol means.", "",
             "| distill | zero-shot | base | novel | HM | HM - v2 recipe | 95% interval |", "|---|---|---|---|---|---|---|"]
    from scipy import stats

    def per_unit(d: float, z: float) -> np.ndarray:
        return np.array([np.mean([r["hm"] for r in u["rows"] if (r["distill"], r["zero_shot"]) == (d, z)])
                         for u in units])

    ref = per_unit(*GRID[0])
    for d, z in GRID:
        rows = [r for u in units for r in u["rows"] if (r["distill"], r["zero_shot"]) == (d, z)]
        diff = per_unit(d, z) - ref
        half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        mean = lambda k: 100 * np.mean([r[k] for r in rows])  # noqa: E731
        lines.append(f"| {d:g} | {z:g} | {mean('base'):.1f} | {mean('novel'):.1f} | {mean('hm'):.1f} | "
                     f"{100 * diff.mean():+.1f} | " + (f"[{100 * (diff.mean() - half):+.1f}, {100 * (diff.mean() + half):+.1f}] |"
                                                if len(diff) > 1 else "n/a (1 unit) |"))
    transferred = [r["transferred"] for u in units for r in u["rows"] if (r["distill"], r["zero_shot"]) == GRID[0]]
    zs = [u["strong_zero_shot"] for u in units]
    lines += ["", f"Transferred (no backprop): base {100 * np.mean([t['base'] for t in transferred]):.1f}, novel "
              f"{100 * np.mean([t['novel'] for t in transferred]):.1f}, HM {100 * np.mean([t['hm'] for t in transferred]):.1f}; "
              f"strong zero-shot: base {100 * np.mean([t['base'] for t in zs]):.1f}, novel "
              f"{100 * np.mean([t['novel'] for t in zs]):.1f}, HM {100 * np.mean([t['hm'] for t in zs]):.1f}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_dev_study(__doc__, OUT, SUMMARY, run_unit, summarise, argv)


if __name__ == "__main__":
    raise SystemExit(main())

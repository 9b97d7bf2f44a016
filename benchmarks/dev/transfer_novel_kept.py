"""Development only (issue 24): an extraction that trusts the teacher only where it was trained.

The evaluation of protocol v2 (`results/dev/transfer-novel-gap.md`) found the teacher's novel
accuracy below the weak zero-shot's, and the transferred adapter carrying that loss to the
strong model. Here extraction distils the teacher's logits on the base-class and auxiliary
columns and the weak zero-shot's own logits on the novel-class columns (the teacher's change
is kept only for the classes it had labels for), then alignment, transfer and TransMiter+ run
as in v2. On the protocol's DEVELOPMENT splits, seeds and images only (held-out training
images, no test image). Nothing here is an evaluation result.

    python benchmarks/dev/transfer_novel_kept.py            # run the missing units, then summarise
    python benchmarks/dev/transfer_novel_kept.py --report   # only the summary
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import RESULTS, command_line  # noqa: E402
from transfer_dev import _scored, _setting, _shared, run_dev_study  # noqa: E402

OUT = RESULTS / "dev" / "transfer-novel-kept-units"
SUMMARY = RESULTS / "dev" / "transfer-novel-kept.md"
VARIANTS = ("v2", "novel_kept")


class NovelKeptTeacher:
    """The teacher's logits with its novel-class columns replaced by the weak zero-shot's."""

    def __init__(self, teacher, novel: list[int]) -> None:
        import torch

        self.teacher, self.novel = teacher, torch.as_tensor(list(novel), dtype=torch.long)

    def logits(self, run, names):
        from vimw.transfer.protocol import gather

        target, seconds = self.teacher.logits(run, names)
        weak = gather(names, run.shared.logits["weak"].__getitem__, run.split.train)
        target = target.clone()
        target[:, self.novel] = weak[:, self.novel]
        return target, seconds


def run_unit(protocol: dict[str, Any], split: str, seed: int) -> dict[str, Any]:
    from vimw.transfer.data import seed_split
    from vimw.transfer.protocol import SeedRun, align, extract, refine, train_teacher, transfer
    from vimw.transfer.steps import adapter_logits

    dev = protocol["development"]
    cfg, sh = _shared(protocol, dev["pair"], dev["splits"][split], _setting(protocol), protocol["cache"])
    run = SeedRun(cfg, sh, seed, seed_split(sh.sets, seed), lambda m: print(m, flush=True), timed=False)
    strong_test, use = run.logits("strong", "test"), cfg.image_uses()[0]
    teacher = train_teacher(run)
    alignment = align(run, use, record=False)
    rows = []
    for variant in VARIANTS:
        source = teacher if variant == "v2" else NovelKeptTeacher(teacher, list(run.sets.novel))
        adapter, _ = extract(run, source, use, record=False)
        for p in ("all", "base"):
            moved, _, _ = transfer(run, p, adapter, alignment)
            plus, _, info = refine(run, p, moved, alignment, cfg.refine)
            rows.append({"variant": variant, "protocol": p,
                         "transferred": _scored(run, adapter_logits(moved, strong_test)),
                         "transmiter_plus": _scored(run, adapter_logits(plus, strong_test)),
                         "refine_lr": info["lr"], "refine_epoch": info["epoch"]})
            print(f"  {split} s{seed} {variant} [{p}] transferred {rows[-1]['transferred']['hm']:.3f} "
                  f"(novel {rows[-1]['transferred']['novel']:.3f}) TransMiter+ {rows[-1]['transmiter_plus']['hm']:.3f} "
                  f"(novel {rows[-1]['transmiter_plus']['novel']:.3f})", flush=True)
    return {"split": split, "seed": seed, "rows": rows, "strong_zero_shot": _scored(run, strong_test),
            "teacher": _scored(run, teacher.test), "weak_zero_shot": _scored(run, run.logits("weak", "test"))}


def summarise(units: list[dict[str, Any]]) -> str:
    from scipy import stats

    def mean(variant: str, what: str, key: str, u=None) -> float:
        pool = [u] if u is not None else units
        return float(np.mean([r[what][key] for x in pool for r in x["rows"] if r["variant"] == variant]))

    lines = ["# Extraction that keeps the weak zero-shot on the novel columns: DEVELOPMENT runs (not results)", "",
             f"Command: `{command_line()}`", "",
             f"{len(units)} units (development splits x seeds, held-out training images); scores in %, the mean of "
             "both validation protocols; HM differences paired per unit against v2's extraction, 95% t interval. "
             f"Strong zero-shot novel {100 * np.mean([u['strong_zero_shot']['novel'] for u in units]):.1f}, teacher "
             f"novel {100 * np.mean([u['teacher']['novel'] for u in units]):.1f}, weak zero-shot novel "
             f"{100 * np.mean([u['weak_zero_shot']['novel'] for u in units]):.1f}.", "",
             "| extraction | transferred base / novel / HM | TransMiter+ base / novel / HM | TransMiter+ HM - v2 | 95% interval |",
             "|---|---|---|---|---|"]
    ref = np.array([mean("v2", "transmiter_plus", "hm", u) for u in units])
    for variant in VARIANTS:
        d = np.array([mean(variant, "transmiter_plus", "hm", u) for u in units]) - ref
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        cell = lambda what: " / ".join(f"{100 * mean(variant, what, k):.1f}" for k in ("base", "novel", "hm"))  # noqa: E731
        interval = f"[{100 * (d.mean() - half):+.1f}, {100 * (d.mean() + half):+.1f}]" if len(d) > 1 else "n/a (1 unit)"
        lines.append(f"| {variant} | {cell('transferred')} | {cell('transmiter_plus')} | {100 * d.mean():+.1f} | {interval} |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    return run_dev_study(__doc__, OUT, SUMMARY, run_unit, summarise, argv)


if __name__ == "__main__":
    raise SystemExit(main())

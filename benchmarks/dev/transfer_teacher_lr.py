"""Development only (issue 24): can a teacher that gains on the novel classes give TransMiter+
the novel accuracy strong fine-tuning has?

Protocol v2's evaluation has the weak teacher's novel accuracy at or below the weak zero-shot's,
so the transferred adapter has no novel-class gain to carry, while strong fine-tuning gains
2-3 novel points on Lite2. Strong fine-tuning searches a learning-rate grid (it chose the
highest rates); the teacher trains at one rate (3e-3). This trains the teacher at each rate of
strong fine-tuning's grid and, for each, runs extraction, alignment, transfer and TransMiter+
(the v2 recipe), on the protocol's DEVELOPMENT splits, seeds and images only (held-out
training images, no test image). The ``grid`` row picks the teacher's rate by base-class
validation (the teacher's own rule), as strong fine-tuning picks its own. Nothing here is an
evaluation result; a setting it favours enters a new protocol version before any evaluation run.

    python benchmarks/dev/transfer_teacher_lr.py            # run the missing units, then summarise
    python benchmarks/dev/transfer_teacher_lr.py --report   # only the summary
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import RESULTS, command_line  # noqa: E402
from transfer_dev import _scored, _setting, _shared, run_dev_study  # noqa: E402

OUT = RESULTS / "dev" / "transfer-teacher-lr-units"
SUMMARY = RESULTS / "dev" / "transfer-teacher-lr.md"


def run_unit(protocol: dict[str, Any], split: str, seed: int) -> dict[str, Any]:
    from vimw.evaluation.selection import best_candidate
    from vimw.transfer.data import seed_split
    from vimw.transfer.protocol import SeedRun, align, extract, refine, train_teacher, transfer
    from vimw.transfer.steps import adapter_logits

    dev = protocol["development"]
    cfg, sh = _shared(protocol, dev["pair"], dev["splits"][split], _setting(protocol), protocol["cache"])
    run = SeedRun(cfg, sh, seed, seed_split(sh.sets, seed), lambda m: print(m, flush=True), timed=False)
    strong_test, use = run.logits("strong", "test"), cfg.image_uses()[0]
    alignment = align(run, use, record=False)
    out = {"split": split, "seed": seed, "teachers": [], "strong_zero_shot": _scored(run, strong_test),
           "weak_zero_shot": _scored(run, run.logits("weak", "test"))}
    for lr in protocol["evaluation"]["grids"]["strong_lrs"]:
        started = time.perf_counter()
        teacher = train_teacher(run, replace(cfg.teacher, lr=lr))
        seconds = time.perf_counter() - started
        adapter, _ = extract(run, teacher, use, record=False)
        entry = {"lr": lr, "val": run.choices["teacher"]["val"], "epoch": run.choices["teacher"]["epoch"],
                 "teacher_seconds": seconds, "teacher": _scored(run, teacher.test), "rows": []}
        for p in ("all", "base"):
            moved, _, _ = transfer(run, p, adapter, alignment)
            plus, _, info = refine(run, p, moved, alignment, cfg.refine)
            entry["rows"].append({"protocol": p, "transferred": _scored(run, adapter_logits(moved, strong_test)),
                                  "transmiter_plus": _scored(run, adapter_logits(plus, strong_test)),
                                  "refine_lr": info["lr"], "refine_epoch": info["epoch"]})
            print(f"  {split} s{seed} teacher lr {lr:g} [{p}] teacher novel {entry['teacher']['novel']:.3f} "
                  f"transferred HM {entry['rows'][-1]['transferred']['hm']:.3f} TransMiter+ HM "
                  f"{entry['rows'][-1]['transmiter_plus']['hm']:.3f}", flush=True)
        out["teachers"].append(entry)
    out["grid_pick"] = out["teachers"][best_candidate([t["val"] for t in out["teachers"]])]["lr"]
    return out


def _counts(values: list[float]) -> str:
    return ", ".join(f"{v:g} in {values.count(v)} of {len(values)}" for v in sorted(set(values)))


def summarise(units: list[dict[str, Any]]) -> str:
    from scipy import stats

    lrs = [t["lr"] for t in units[0]["teachers"]]
    options = [(f"lr {lr:g}", lambda u, lr=lr: next(t for t in u["teachers"] if t["lr"] == lr)) for lr in lrs]
    options.append(("grid (base validation)", lambda u: next(t for t in u["teachers"] if t["lr"] == u["grid_pick"])))
    lines = ["# The teacher's learning rate and TransMiter's novel classes: DEVELOPMENT runs (not results)", "",
             f"Command: `{command_line()}`", "",
             f"{len(units)} units (development splits x seeds, held-out training images); scores in %, TransMiter rows "
             "the mean of both validation protocols; differences paired per unit against the v2 teacher (lr "
             f"{lrs[0]:g}) with a 95% t interval. Weak zero-shot novel "
             f"{100 * np.mean([u['weak_zero_shot']['novel'] for u in units]):.1f}, strong zero-shot novel "
             f"{100 * np.mean([u['strong_zero_shot']['novel'] for u in units]):.1f}.", "",
             "| teacher | teacher base | teacher novel | transferred novel | transferred HM | TransMiter+ base | "
             "TransMiter+ novel | TransMiter+ HM | HM - v2 teacher | 95% interval |", "|---|---|---|---|---|---|---|---|---|---|"]

    def plus(t, key, what="transmiter_plus"):
        return float(np.mean([r[what][key] for r in t["rows"]]))

    ref = np.array([plus(options[0][1](u), "hm") for u in units])
    for name, pick in options:
        ts = [pick(u) for u in units]
        hm = np.array([plus(t, "hm") for t in ts])
        d = hm - ref
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        m = lambda xs: 100 * float(np.mean(xs))  # noqa: E731
        lines.append(f"| {name} | {m([t['teacher']['base'] for t in ts]):.1f} | {m([t['teacher']['novel'] for t in ts]):.1f} | "
                     f"{m([plus(t, 'novel', 'transferred') for t in ts]):.1f} | {m([plus(t, 'hm', 'transferred') for t in ts]):.1f} | "
                     f"{m([plus(t, 'base') for t in ts]):.1f} | {m([plus(t, 'novel') for t in ts]):.1f} | {m(hm):.1f} | "
                     f"{100 * d.mean():+.1f} | " + (f"[{100 * (d.mean() - half):+.1f}, {100 * (d.mean() + half):+.1f}] |"
                                                if len(d) > 1 else "n/a (1 unit) |"))
    lines += ["", "Teacher seconds per rate: " + ", ".join(
        f"{lr:g}: {np.mean([next(t for t in u['teachers'] if t['lr'] == lr)['teacher_seconds'] for u in units]):.0f} s"
        for lr in lrs) + f"; the grid picked {_counts([u['grid_pick'] for u in units])}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_dev_study(__doc__, OUT, SUMMARY, run_unit, summarise, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""Development runs of the TransMiter splits protocol: every default is chosen here, on
development splits, seeds and images (``benchmarks/transfer_protocol.yaml``'s development
part), never on an evaluation split or seed, and never on a test image (development scores
held-out training images).

    python benchmarks/transfer_dev.py --stage 1        # teacher consistency, K, alignment views and images
    python benchmarks/transfer_dev.py --stage 2        # refinement's pull toward transferred, at stage 1's choices
    python benchmarks/transfer_dev.py --stage strong   # strong fine-tuning's consistency weight
    python benchmarks/transfer_dev.py --stage pairs    # the second pair and a second dataset, zero-shot on the pool
    python benchmarks/transfer_dev.py --report         # results/transfer-dev.json / .md and the rules' choices

Each unit (stage, split, seed) is written to ``results/transfer-dev-units/`` as it finishes;
a rerun skips the units that exist under the same protocol. The report applies the
protocol's rules to the units and says what they choose; nothing here is an evaluation result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402
from transfer_splits import (PROTOCOL, chosen_defaults, code_version, deterministic, protocol_config,  # noqa: E402
                             read_protocol, write_json)

UNITS = RESULTS / "transfer-dev-units"
NAME = "transfer-dev"
TIE = 0.001  # means within 0.1 HM points are a tie (the protocol's rule)


def _scored(run, logits) -> dict[str, float]:
    from vimw.transfer.scoring import base_novel_scores

    s = run.sets
    return base_novel_scores(logits[:, : run.c], s.test_labels, s.base, s.novel)


def _setting(protocol: dict[str, Any], **values: Any) -> dict[str, Any]:
    """Chosen defaults with some values replaced (a point of a development grid)."""
    return {**chosen_defaults(protocol), **values}


def _shared(protocol, pair, base, defaults, cache):
    from vimw.transfer.protocol import prepare

    cfg = protocol_config(protocol, "development", pair, base, defaults)
    return cfg, prepare(cfg, cache, log=lambda m: print(m, flush=True))


def run_dev_study(doc: str | None, out: Path, summary: Path, run_unit, summarise, argv: list[str] | None = None) -> int:
    """A development study's command line: run ``run_unit(protocol, split, seed)`` for every
    development (split, seed) that has no file in ``out`` yet, each written as it finishes,
    then write ``summarise(units)`` to ``summary`` (``--report``: only that)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="store_true", help="only the summary, from the units")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    code_version()
    protocol = read_protocol(str(PROTOCOL))
    dev = protocol["development"]
    if not args.report:
        print(deterministic(protocol["threads"]), flush=True)
        for seed in dev["seeds"]:
            for split in dev["splits"]:
                path = out / f"{split}__s{seed}.json"
                if path.exists():
                    continue
                started, load = time.perf_counter(), os.getloadavg()
                unit = run_unit(protocol, split, seed)
                unit.update(wall_seconds=time.perf_counter() - started, load_average={"start": load},
                            code=code_version(), machine=machine(), command=command_line(), protocol=protocol["file"])
                write_json(path, unit)
    text = summarise([json.loads(p.read_text()) for p in sorted(out.glob("*.json"))])
    summary.write_text(text)
    print(text)
    return 0


def stage1(protocol: dict[str, Any], split: str, seed: int, cache: str) -> dict[str, Any]:
    """The transferred adapter over the stage 1 grid (one teacher per consistency weight)."""
    from vimw.transfer.data import seed_split
    from vimw.transfer.protocol import ImageUse, SeedRun, align, alignment_rank, extract, train_teacher, transfer
    from vimw.transfer.steps import adapter_logits

    dev, grid = protocol["development"], protocol["development"]["stage1"]
    pair, base = dev["pair"], dev["splits"][split]
    widest = _setting(protocol, align_views=max(grid["align_views"]), num_align=max(grid["num_align"]))
    shared = {k: _shared(protocol, pair, base, {**widest, "K": k}, cache) for k in grid["K"]}
    uses = [ImageUse("", "shots", 0)] + [ImageUse("unlabeled", "unlabeled", n) for n in grid["num_align"]]
    rows, teachers = [], {}
    log = lambda m: print(m, flush=True)  # noqa: E731
    for c in grid["consistency"]:
        cfg, sh = shared[grid["K"][0]]
        run = SeedRun(cfg, sh, seed, seed_split(sh.sets, seed), log, timed=False)
        teachers[c] = train_teacher(run, replace(cfg.teacher, consistency=c))
        adapters = {}
        for k in grid["K"]:
            cfg, sh = shared[k]
            for views in grid["align_views"]:
                run = SeedRun(replace(cfg, data=replace(cfg.data, align_views=views)), sh, seed,
                              seed_split(sh.sets, seed), log, timed=False)
                for use in uses:
                    if use.extraction not in adapters:
                        adapters[use.extraction] = extract(run, teachers[c], use, record=False)[0]
                    alignment = align(run, use, record=False)
                    rank = alignment_rank(alignment.source, alignment.target)
                    for p in ("all", "base"):
                        moved, _, lam = transfer(run, p, adapters[use.extraction], alignment)
                        rows.append({"consistency": c, "K": k, "align_views": views, "use": use.name or "shots",
                                     "num_align": use.num_align, "protocol": p, "lambda": lam["chosen"],
                                     "lambda_grid": [x["lambda"] for x in lam["candidates"]], **rank,
                                     **_scored(run, adapter_logits(moved, run.logits("strong", "test")))})
                        print(f"  c {c} K {k} views {views} {rows[-1]['use']}/{use.num_align} [{p}] lambda "
                              f"{lam['chosen']:g} HM {rows[-1]['hm']:.3f}", flush=True)
            adapters = {}
    return {"rows": rows, "strong_zero_shot": _scored(run, run.logits("strong", "test"))}


def stage2(protocol: dict[str, Any], split: str, seed: int, cache: str, chosen: dict[str, Any]) -> dict[str, Any]:
    """TransMiter+ for each distillation weight, at stage 1's choices (image use i)."""
    from vimw.transfer.data import seed_split
    from vimw.transfer.protocol import SeedRun, align, extract, refine, train_teacher, transfer
    from vimw.transfer.steps import adapter_logits

    dev = protocol["development"]
    cfg, sh = _shared(protocol, dev["pair"], dev["splits"][split], _setting(protocol, **chosen), cache)
    run = SeedRun(cfg, sh, seed, seed_split(sh.sets, seed), lambda m: print(m, flush=True), timed=False)
    teacher = train_teacher(run)
    use = cfg.image_uses()[0]
    adapter, _ = extract(run, teacher, use, record=False)
    alignment = align(run, use, record=False)
    rows = []
    for p in ("all", "base"):
        moved, _, lam = transfer(run, p, adapter, alignment)
        transferred = _scored(run, adapter_logits(moved, run.logits("strong", "test")))
        for w in dev["stage2"]["distill"]:
            plus, secs, info = refine(run, p, moved, alignment, replace(cfg.refine, distill=w))
            rows.append({"protocol": p, "distill": w, "lr": info["lr"], "epoch": info["epoch"], "seconds": secs,
                         "transferred": transferred, **_scored(run, adapter_logits(plus, run.logits("strong", "test")))})
            print(f"  [{p}] distill {w:g}: lr {info['lr']:g} epoch {info['epoch']} HM {rows[-1]['hm']:.3f} "
                  f"(novel {rows[-1]['novel']:.3f}, transferred {transferred['novel']:.3f})", flush=True)
    return {"given": chosen, "rows": rows}


def stage_strong(protocol: dict[str, Any], split: str, seed: int, cache: str, chosen: dict[str, Any]) -> dict[str, Any]:
    """Strong fine-tuning (the evaluation's rate grid) for each consistency weight."""
    from vimw.transfer.data import seed_split
    from vimw.transfer.protocol import SeedRun, fine_tune_strong

    dev = protocol["development"]
    rows = []
    for c in dev["strong_fine_tuning"]["consistency"]:
        cfg, sh = _shared(protocol, dev["pair"], dev["splits"][split], _setting(protocol, **chosen,
                                                                                 strong_consistency=c), cache)
        run = SeedRun(cfg, sh, seed, seed_split(sh.sets, seed), lambda m: print(m, flush=True), timed=False)
        fine_tune_strong(run)
        for p in ("all", "base"):
            rows.append({"strong_consistency": c, "protocol": p, **run.choices[p]["strong_fine_tuning"],
                         **{k: run.results[p]["strong_fine_tuned"][k] for k in ("base", "novel", "hm", "seconds")}})
    return {"given": chosen, "rows": rows}


def stage_pairs(protocol: dict[str, Any], cache: str) -> dict[str, Any]:
    """Zero-shot base / novel / HM on the development validation pool: the second pair's
    candidates (default split) and the second datasets' (their first half as base)."""
    from vimw.transfer.protocol import measure_pairs

    dev = protocol["development"]
    cfg = protocol_config(protocol, "development", dev["pair"], protocol["evaluation"]["splits"]["default"]).data
    strong = [f"efficientnet_lite1@{r}{inv}" for r in (128, 160, 192, 224) for inv in ("", "+invert")]
    pairs = measure_pairs(cfg, [dev["pair"]["weak"]], strong, cache)
    datasets = {}
    for task in ("mnist", "digits8x8"):
        data = replace(cfg, task=task, base=(), num_unlabeled=400, num_calibration=200, num_test=100)
        datasets[task] = measure_pairs(data, [dev["pair"]["weak"]], [], cache)[0]
    return {"pairs": pairs, "datasets": datasets}


# -- the rules ----------------------------------------------------------------------------------------------
def _best(means: dict[Any, float], order: list[Any]) -> Any:
    """The highest mean; within TIE of it, the earliest in ``order`` (the protocol's tie rule)."""
    top = max(means.values())
    return next(k for k in order if k in means and means[k] >= top - TIE)


def _counts(values: list[Any]) -> dict[str, int]:
    """How often each value was chosen."""
    return {str(x): values.count(x) for x in sorted(set(values))}


def _mean_by(rows: list[dict[str, Any]], keys: tuple[str, ...], value: str = "hm") -> dict[tuple, float]:
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r[value])
    return {k: float(np.mean(v)) for k, v in groups.items()}


def choose_stage1(protocol: dict[str, Any], units: list[dict[str, Any]]) -> dict[str, Any]:
    grid = protocol["development"]["stage1"]
    rows = [r for u in units for r in u["result"]["rows"]]
    # both image uses weigh the same: use (ii) at the grid's first number of alignment images
    joint_rows = [r for r in rows if r["use"] == "shots" or r["num_align"] == grid["num_align"][0]]
    keys = ("consistency", "K", "align_views")
    order = [(c, k, v) for c in grid["consistency"] for k in grid["K"] for v in grid["align_views"]]
    joint = _mean_by(joint_rows, keys)
    c, k, v = _best(joint, order)
    use2 = [r for r in rows if r["use"] == "unlabeled" and (r["consistency"], r["K"], r["align_views"]) == (c, k, v)]
    by_align = {key[0]: m for key, m in _mean_by(use2, ("num_align",)).items()}
    chosen = {"consistency": c, "K": k, "align_views": v, "num_align": _best(by_align, grid["num_align"])}
    at = [r for r in rows if (r["consistency"], r["K"], r["align_views"]) == (c, k, v)]
    lam = [r["lambda"] for r in at]
    edges = {"low": float(np.mean([x == min(r["lambda_grid"]) for x, r in zip(lam, at)])),
             "high": float(np.mean([x == max(r["lambda_grid"]) for x, r in zip(lam, at)]))}
    return {"chosen": chosen, "joint_means": {str(key): m for key, m in joint.items()},
            "num_align_means": by_align, "lambda_edges": edges,
            "lambda_counts": _counts(lam)}


def choose_stage2(protocol: dict[str, Any], units: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for u in units for r in u["result"]["rows"]]
    grid = protocol["development"]["stage2"]["distill"]
    means = {k[0]: m for k, m in _mean_by(rows, ("distill",)).items()}
    novel = {k[0]: m for k, m in _mean_by(rows, ("distill",), "novel").items()}
    base = {k[0]: m for k, m in _mean_by(rows, ("distill",), "base").items()}
    transferred_novel = float(np.mean([r["transferred"]["novel"] for r in rows]))
    transferred_hm = float(np.mean([r["transferred"]["hm"] for r in rows]))
    return {"chosen": {"distill": _best(means, grid)}, "hm": means, "base": base, "novel": novel,
            "transferred_novel": transferred_novel, "transferred_hm": transferred_hm,
            "lr_counts": _counts([r["lr"] for r in rows])}


def choose_strong(protocol: dict[str, Any], units: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for u in units for r in u["result"]["rows"]]
    grid = protocol["development"]["strong_fine_tuning"]["consistency"]
    means = {k[0]: m for k, m in _mean_by(rows, ("strong_consistency",)).items()}
    return {"chosen": {"strong_consistency": _best(means, grid)}, "hm": means,
            "lr_counts": _counts([r["lr"] for r in rows])}


def choose_pairs(pairs: dict[str, Any]) -> dict[str, Any]:
    strong = [r for r in pairs["pairs"] if r["role"] == "strong"]
    order = sorted(strong, key=lambda r: (int(r["model"].split("@")[1].split("+")[0]), "+invert" in r["model"]))
    best = _best({r["model"]: r["hm"] for r in strong}, [r["model"] for r in order])
    admitted = {}
    for task, r in pairs["datasets"].items():
        chance = 1 / 5  # each half of a 10-class task has five classes
        admitted[task] = {"base": r["base"], "novel": r["novel"], "chance": chance,
                          "admitted": min(r["base"], r["novel"]) >= chance + 0.10}
    return {"second_strong": best, "datasets": admitted}


# -- running and reporting ----------------------------------------------------------------------------------
def _units(stage: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(UNITS.glob(f"{stage}__*.json"))]


def _accepted(protocol: dict[str, Any]) -> set[str]:
    """Protocol versions whose development units count: this one, and the one development ran
    under when a later version keeps its development part (``development.ran_under``)."""
    return {protocol["file"]["sha"], protocol["development"].get("ran_under", protocol["file"]["sha"])}


def _current(protocol, stage):
    return [u for u in _units(stage) if u["protocol"]["sha"] in _accepted(protocol)]


def run_stage(protocol: dict[str, Any], stage: str) -> None:
    dev, cache = protocol["development"], protocol["cache"]
    settings = deterministic(int(protocol["threads"]))
    if stage == "pairs":
        targets = [("all", None)]
    else:
        seeds = dev["seeds"][:1] if stage == "strong" else dev["seeds"]
        targets = [(split, seed) for split in dev["splits"] for seed in seeds]
    chosen: dict[str, Any] = {}
    if stage in ("2", "strong"):
        chosen = choose_stage1(protocol, _current(protocol, "1"))["chosen"]
    if stage == "strong":
        chosen.update(choose_stage2(protocol, _current(protocol, "2"))["chosen"])
    for split, seed in targets:
        path = UNITS / (f"{stage}__{split}__s{seed}.json" if seed is not None else f"{stage}__{split}.json")
        if path.exists() and json.loads(path.read_text())["protocol"]["sha"] in _accepted(protocol):
            continue
        print(f"development unit {path.stem}", flush=True)
        load, started = os.getloadavg(), time.perf_counter()
        if stage == "1":
            result = stage1(protocol, split, seed, cache)
        elif stage == "2":
            result = stage2(protocol, split, seed, cache, chosen)
        elif stage == "strong":
            result = stage_strong(protocol, split, seed, cache, chosen)
        else:
            result = stage_pairs(protocol, cache)
        write_json(path, {"stage": stage, "split": split, "seed": seed, "development": True,
                          "protocol": protocol["file"], "result": result, "determinism": settings,
                          "wall_seconds": time.perf_counter() - started,
                          "load_average": {"start": load, "end": os.getloadavg()}, "machine": machine(),
                          "code": code_version(), "command": command_line()})


def _table(title: str, header: list[str], rows: list[list[Any]]) -> list[str]:
    return [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *["| " + " | ".join(str(x) for x in row) + " |" for row in rows], ""]


def report(protocol: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = {"development": True, "protocol": protocol["file"]}
    lines = ["# TransMiter splits: DEVELOPMENT runs (not results)", "",
             "Development splits, seeds 100+, data_seed 100 and held-out *training* images (no test image), as "
             f"`{protocol['file']['path']}` (git blob `{protocol['file']['sha']}`; units written under "
             f"{sorted(_accepted(protocol))}) fixes; every number here chose a default by the protocol's rules and "
             "none is reported as a result. HM in %.", ""]
    one = _current(protocol, "1")
    if one:
        s1 = payload["stage1"] = {**choose_stage1(protocol, one), "units": len(one)}
        rows = [[k, f"{100 * m:.1f}"] for k, m in s1["joint_means"].items()]
        lines += _table(f"Stage 1: transferred adapter, mean over {len(one)} units, both protocols and image uses",
                        ["(consistency, K, align views)", "HM"], rows)
        lines += _table("Stage 1: image use (ii)'s unlabeled alignment images, at those choices",
                        ["num_align", "HM"], [[k, f"{100 * m:.1f}"] for k, m in s1["num_align_means"].items()])
        ranks = {(r["K"], r["align_views"], r["use"], r["num_align"]): (r["rows"], r["rank_cross"])
                 for u in one for r in u["result"]["rows"]}
        lines += _table("Alignment rows and the rank of T^T S (first unit)", ["K, views, use, unlabeled", "rows, rank"],
                        [[k, v] for k, v in sorted(ranks.items())])
        lines += [f"Chosen lambdas at the stage 1 choice: {s1['lambda_counts']} (share on the grid's low edge "
                  f"{s1['lambda_edges']['low']:.2f}, high edge {s1['lambda_edges']['high']:.2f}).",
                  f"Stage 1 chooses: {s1['chosen']}.", ""]
    two = _current(protocol, "2")
    if two:
        s2 = payload["stage2"] = {**choose_stage2(protocol, two), "units": len(two)}
        lines += _table(f"Stage 2: TransMiter+ by distillation weight, mean over {len(two)} units and both protocols "
                        f"(transferred: novel {100 * s2['transferred_novel']:.1f}, HM {100 * s2['transferred_hm']:.1f})",
                        ["distill", "base", "novel", "HM"],
                        [[w, f"{100 * s2['base'][w]:.1f}", f"{100 * s2['novel'][w]:.1f}", f"{100 * s2['hm'][w]:.1f}"]
                         for w in s2["hm"]])
        lines += [f"Refinement's chosen learning rates (every weight): {s2['lr_counts']}. "
                  f"Stage 2 chooses: {s2['chosen']}.", ""]
    strong = _current(protocol, "strong")
    if strong:
        st = payload["strong"] = {**choose_strong(protocol, strong), "units": len(strong)}
        lines += _table(f"Strong fine-tuning by consistency weight, mean over {len(strong)} units and both protocols",
                        ["consistency", "HM"], [[c, f"{100 * m:.1f}"] for c, m in st["hm"].items()])
        lines += [f"Chosen learning rates: {st['lr_counts']}. Strong fine-tuning chooses: {st['chosen']}.", ""]
    pairs = _current(protocol, "pairs")
    if pairs:
        pr = payload["pairs"] = {**choose_pairs(pairs[0]["result"]), "measured": pairs[0]["result"]}
        lines += _table("Second pair: zero-shot on the development pool, default split",
                        ["role", "model", "base", "novel", "HM", "ms / image"],
                        [[r["role"], r["model"], f"{100 * r['base']:.1f}", f"{100 * r['novel']:.1f}",
                          f"{100 * r['hm']:.1f}", f"{1000 * r['seconds_per_image']:.0f}"]
                         for r in pr["measured"]["pairs"]])
        lines += _table("Second dataset: the weak model's zero-shot accuracy on the development pool",
                        ["task", "base", "novel", "chance", "admitted"],
                        [[t, f"{100 * d['base']:.1f}", f"{100 * d['novel']:.1f}", f"{100 * d['chance']:.0f}",
                          d["admitted"]] for t, d in pr["datasets"].items()])
        lines += [f"The second pair's strong model: {pr['second_strong']}.", ""]
    write_results(NAME, payload, "\n".join(lines))
    print("\n".join(lines))
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default=str(PROTOCOL))
    parser.add_argument("--stage", choices=("1", "2", "strong", "pairs"))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    code_version()  # fixes the code this process runs for every unit it writes
    protocol = read_protocol(args.protocol)
    if args.stage:
        run_stage(protocol, args.stage)
    report(protocol)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""TransMiter on many base/novel splits and weak -> strong pairs, under a protocol fixed in advance.

Reads ``benchmarks/transfer_protocol.yaml`` (its evaluation part), runs every unit - one
(dataset, pair, split, seed), every method under both validation protocols - that has no
result yet, each in turn, each written to ``results/transfer-splits-units/`` as soon as it
finishes (a rerun resumes), then writes ``results/transfer-splits.json`` and ``.md``: one
row per (dataset, pair, split, protocol, seed, method), the protocol's path and git blob hash,
the statistics and the goals the protocol names, checked.

    python benchmarks/transfer_splits.py                       # run what is missing, then report
    python benchmarks/transfer_splits.py --pairs lite0@96->lite2@160 --splits default complement
    python benchmarks/transfer_splits.py --report              # only the report, from the units
    python benchmarks/transfer_splits.py --draw                # the random splits the protocol lists

A unit is deterministic for its seed on CPU: one torch thread (``threads`` in the protocol),
deterministic algorithms, seeded generators, the same numbers whether the logit cache is
filled or not. Timings are measured in the unit's own process; the load average is recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, claim, command_line, commit_file, machine, protocol_outputs, write_results  # noqa: E402
from _common import code_version as common_code_version  # noqa: E402

PROTOCOL = Path(__file__).resolve().with_name("transfer_protocol.yaml")
ROOT = Path(__file__).resolve().parent.parent
NAME = "transfer-splits"
UNITS = RESULTS / f"{NAME}-units"  # version 2's units (a later protocol may name its own: protocol_outputs)
ROW_KEYS = ("dataset", "pair", "split", "protocol", "seed", "method", "base", "novel", "hm", "seconds")


# -- the protocol file ----------------------------------------------------------------------------------
def blob_sha(path: str | Path) -> str:
    """The git blob hash of a file (what ``git hash-object FILE`` prints)."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def read_protocol(path: str | Path = PROTOCOL) -> dict[str, Any]:
    """The protocol file's contents, with its repository path and blob hash."""
    import yaml

    path = Path(path)
    protocol = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        shown = str(path.resolve().relative_to(Path(__file__).resolve().parent.parent))
    except ValueError:
        shown = str(path)
    return {**protocol, "file": {"path": shown, "sha": blob_sha(path)}}


def draw_splits(classes: list[str], count: int, seed: int, exclude: list[list[str]]) -> list[list[str]]:
    """``count`` base-class lists of half the classes, drawn uniformly with ``seed`` from the
    subsets that are neither an excluded split nor an excluded split's complement."""
    excluded = {frozenset(e) for e in exclude} | {frozenset(set(classes) - set(e)) for e in exclude}
    candidates = [list(c) for c in itertools.combinations(classes, len(classes) // 2) if frozenset(c) not in excluded]
    picked = np.random.default_rng(seed).choice(len(candidates), count, replace=False)
    return [candidates[i] for i in sorted(picked)]


def code_version() -> str:
    """The commit the code ran at (``+changes`` when src/ or these benchmarks differ from it)."""
    return common_code_version("src", "benchmarks/transfer_splits.py", "benchmarks/transfer_dev.py")


def deterministic(threads: int) -> dict[str, Any]:
    """One unit's numbers depend on its seed alone: a fixed thread count, deterministic algorithms."""
    import torch

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    return {"torch_threads": torch.get_num_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}


# -- one unit ---------------------------------------------------------------------------------------------
def unit_id(pair: str, split: str, seed: int, dataset: str) -> str:
    return f"{dataset}__{pair.replace('->', '_to_').replace('@', '-')}__{split}__s{seed}"


DEFAULT_KEYS = ("consistency", "K", "align_views", "num_align", "distill", "zero_shot", "strong_consistency")


def chosen_defaults(protocol: dict[str, Any]) -> dict[str, Any]:
    """The defaults development chose (version 2's ``evaluation.defaults``), else the library's."""
    from vimw.transfer.settings import TransferSettings

    s = TransferSettings()
    library = {"consistency": s.teacher.consistency, "K": s.data.K, "align_views": s.data.align_views,
               "num_align": s.data.num_align, "distill": s.refine.distill, "zero_shot": s.refine.zero_shot,
               "strong_consistency": None}
    return {**library, **(protocol["evaluation"].get("defaults") or {})}


def protocol_config(protocol: dict[str, Any], part: str, pair: dict[str, str], base: list[str],
                    defaults: dict[str, Any] | None = None, **changes: Any):
    """The library's ``ProtocolConfig`` for one unit of the protocol's ``part`` (development or
    evaluation): the data, recipe and grids from the file, the chosen ``defaults``
    (:func:`chosen_defaults` unless given), the rest the library's (``TransferSettings``)."""
    from vimw.transfer.protocol import ImageUse, ProtocolConfig
    from vimw.transfer.settings import TransferSettings

    section, evaluation = protocol[part], protocol["evaluation"]
    d = defaults or chosen_defaults(protocol)
    s = TransferSettings()
    recipe, grids = evaluation["recipe"], evaluation["grids"]
    uses = tuple(ImageUse(u["name"], u["extraction"], d["num_align"] if u["name"] else 0)
                 for u in section["image_uses"])
    data = replace(s.data, **recipe, task=protocol["task"], base=tuple(base), data_seed=section["data_seed"],
                   test_from=section["test_from"], K=d["K"], align_views=d["align_views"],
                   extraction=uses[0].extraction, num_align=uses[0].num_align)
    cfg = ProtocolConfig(data=data, weak=pair["weak"], strong=pair["strong"], plugin=s.finetuned,
                         teacher=replace(s.teacher, consistency=d["consistency"]), extraction=s.extraction,
                         refine=replace(s.refine, lrs=tuple(grids["refine_lrs"]), distill=d["distill"],
                                        zero_shot=d["zero_shot"]),
                         lambdas=tuple(grids["lambdas"]), alphas=tuple(grids["alphas"]), protocols=("all", "base"),
                         strong_lrs=tuple(grids["strong_lrs"]), strong_consistency=d["strong_consistency"],
                         teacher_ablation=False, refine_ablation=True, uses=uses)
    return replace(cfg, **changes)


def flat_rows(seed_result: dict[str, Any], **keys: Any) -> list[dict[str, Any]]:
    """One row per (protocol, method) of one seed's result, with ``keys`` (dataset, pair, split)."""
    return [{**keys, "protocol": protocol, "seed": seed_result["seed"], "method": method,
             **{k: row[k] for k in ("base", "novel", "hm", "seconds")}}
            for protocol, methods in seed_result["rows"].items() for method, row in methods.items()]


def run_unit(protocol: dict[str, Any], pair: dict[str, str], split: str, seed: int, *, cache: str | Path,
             log=print, **changes: Any) -> dict[str, Any]:
    """One evaluation unit: every method, both validation protocols, one seed; its rows,
    choices, seconds, and what the numbers may depend on."""
    from vimw.transfer.protocol import cost_ratios, run_protocol

    settings = deterministic(int(protocol["threads"]))
    reuse = protocol["evaluation"].get("reuse")
    earlier = reused_unit(reuse, unit_id(pair["name"], split, seed, protocol["task"])) if reuse else None
    if reuse:
        changes = {**changes, "strong_ft": False}  # its rows come from the earlier unit
    cfg = protocol_config(protocol, "evaluation", pair, protocol["evaluation"]["splits"][split], **changes)
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = run_protocol(cfg, cache, seeds=(seed,), log=log)
    per_seed = result["per_seed"][0]
    rows = flat_rows(per_seed, dataset=protocol["task"], pair=pair["name"], split=split)
    seconds, reused = per_seed["seconds"], None
    if earlier is not None:
        rows, seconds, reused = merge_reused(reuse, earlier, rows, seconds)
    ratios = {p: cost_ratios(seconds, p) for p in cfg.protocols} if "strong_fine_tuning" in seconds else {}
    return {"unit": {"dataset": protocol["task"], "pair": pair["name"], "split": split, "seed": seed},
            "protocol": protocol["file"], "config": result["config"], "models": result["models"],
            "split_classes": result["split"], "rows": rows, "choices": per_seed["choices"],
            "seconds": seconds, "cost_ratios": ratios, "shared_seconds": result["shared_seconds"],
            "reused": reused, "wall_seconds": time.perf_counter() - started, "determinism": settings,
            "load_average": {"start": load_before, "end": os.getloadavg()}, "machine": machine(),
            "code": code_version(), "command": command_line()}


def reused_unit(reuse: dict[str, Any], unit: str) -> dict[str, Any]:
    """The earlier protocol's unit whose rows this one reuses; refused unless it was written
    under the blob the protocol names."""
    path = RESULTS / reuse["units"] / f"{unit}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: this protocol reuses the rows of {reuse['protocol']}'s units")
    earlier = json.loads(path.read_text())
    if earlier["protocol"]["sha"] != reuse["sha"]:
        raise SystemExit(f"{path} was written under {earlier['protocol']['sha']}, not {reuse['sha']}")
    return earlier


def merge_reused(reuse: dict[str, Any], earlier: dict[str, Any], rows: list[dict[str, Any]],
                 seconds: dict[str, float]) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, Any]]:
    """This unit's rows plus the earlier unit's rows of ``reuse["methods"]`` (and of ``reuse["renamed"]``
    under new names), after checking that every method in ``reuse["identical"]`` scored exactly
    the same in both: a unit is deterministic for its seed, so equal shared rows show that the
    reused rows are the ones this run would have produced."""
    key = lambda r: (r["protocol"], r["method"])  # noqa: E731
    mine, theirs = {key(r): r for r in rows}, {key(r): r for r in earlier["rows"]}
    checked = sorted(k for k in mine if k[1] in reuse["identical"])
    differ = [k for k in checked if k not in theirs or any(mine[k][m] != theirs[k][m] for m in ("base", "novel", "hm"))]
    if differ or not checked:
        raise SystemExit(f"cannot reuse {earlier['unit']}: rows differ from the earlier run's: {differ or 'none checked'}")
    renamed = reuse.get("renamed", {})
    carried = [dict(r) for r in earlier["rows"] if r["method"] in reuse["methods"]]
    carried += [{**r, "method": renamed[r["method"]]} for r in earlier["rows"] if r["method"] in renamed]
    times = {k: v for k, v in earlier["seconds"].items() if k.startswith("strong_fine_tuning")}
    return rows + carried, {**seconds, **times}, {
        "protocol": reuse["protocol"], "sha": reuse["sha"], "methods": sorted({r["method"] for r in carried}),
        "identical_rows_checked": len(checked), "seconds_from_earlier": sorted(times)}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    from vimw.io import atomic_write_text
    from vimw.transfer.scoring import json_safe

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(json_safe(payload), indent=1) + "\n")


def units(protocol: dict[str, Any], pairs: list[str] | None = None, splits: list[str] | None = None):
    """(pair, split, seed) of every evaluation unit, in the order they run: seeds inner, so a
    split is complete early."""
    ev = protocol["evaluation"]
    for pair in ev["pairs"]:
        if pairs and pair["name"] not in pairs:
            continue
        for split in ev["splits"]:
            if not splits or split in splits:
                for seed in ev["seeds"]:
                    yield pair, split, seed


# -- statistics --------------------------------------------------------------------------------------------
def signs(values: list[float], tie: float = 1e-12) -> dict[str, int]:
    return {"ahead": sum(v > tie for v in values), "tied": sum(abs(v) <= tie for v in values),
            "behind": sum(v < -tie for v in values)}


def split_means(rows: list[dict[str, Any]], key: str = "hm") -> dict[str, dict[str, float]]:
    """{method: {split: mean over seeds of ``key``}} for one (dataset, pair, protocol)."""
    values: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        values.setdefault(r["method"], {}).setdefault(r["split"], []).append(r[key])
    return {m: {s: float(np.mean(v)) for s, v in by.items()} for m, by in values.items()}


def paired(rows: list[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """``a`` - ``b`` in HM: per split (mean over seeds of the per-seed difference), their mean
    over splits with a 95% t interval, and sign counts over splits and over split x seed units."""
    from vimw.workflows.compare import mean_interval

    by_unit = {(r["split"], r["seed"], r["method"]): r["hm"] for r in rows}
    units_ = sorted({(s, seed) for s, seed, m in by_unit if m == a and (s, seed, b) in by_unit})
    diffs = {u: by_unit[(*u, a)] - by_unit[(*u, b)] for u in units_}
    per_split: dict[str, list[float]] = {}
    for (split, _), d in diffs.items():
        per_split.setdefault(split, []).append(d)
    split_diffs = {s: float(np.mean(v)) for s, v in per_split.items()}
    return {"a": a, "b": b, "per_split": split_diffs, "over_splits": mean_interval(list(split_diffs.values())),
            "splits": signs(list(split_diffs.values())), "units": signs(list(diffs.values()))}


COMPARISONS = (("transferred", "strong_zero_shot"), ("transferred", "proxy"), ("transferred", "ensemble"),
               ("transmiter_plus", "strong_fine_tuned"), ("transmiter_plus", "transferred"),
               ("transmiter_plus", "transmiter_plus_ce"), ("transferred+unlabeled", "transferred"),
               ("transmiter_plus+unlabeled", "transmiter_plus"), ("transmiter_plus+unlabeled", "strong_fine_tuned"),
               ("transmiter_plus", "transmiter_plus_v2"), ("transmiter_plus+unlabeled", "transmiter_plus_v2+unlabeled"))


def summarise(unit_results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, pair, protocol): split means, means over splits, paired differences, time."""
    rows = [r for u in unit_results for r in u["rows"]]
    out = []
    for dataset, pair, protocol in sorted({(r["dataset"], r["pair"], r["protocol"]) for r in rows
                                            if r["protocol"] in ("all", "base")}):
        part = [r for r in rows if (r["dataset"], r["pair"], r["protocol"]) == (dataset, pair, protocol)]
        means = {k: split_means(part, k) for k in ("base", "novel", "hm")}
        over = {m: {k: float(np.mean(list(means[k][m].values()))) for k in means} for m in means["hm"]}
        comparisons = [paired(part, a, b) for a, b in COMPARISONS if a in means["hm"] and b in means["hm"]]
        ratios = [u["cost_ratios"][protocol] for u in unit_results
                  if u["unit"]["pair"] == pair and u["unit"]["dataset"] == dataset and u["cost_ratios"]]
        time_ = {k: float(np.mean([r[k] for r in ratios])) for k in ratios[0]} if ratios else {}
        out.append({"dataset": dataset, "pair": pair, "protocol": protocol, "splits": sorted(means["hm"]["transferred"]),
                    "seeds": sorted({r["seed"] for r in part}), "split_means": means, "over_splits": over,
                    "comparisons": comparisons, "cost_ratios": time_,
                    "seconds": _seconds(unit_results, dataset, pair)})
    return out


def _seconds(unit_results: list[dict[str, Any]], dataset: str, pair: str) -> dict[str, float]:
    """Mean seconds per unit of the parts the time goal weighs."""
    keys = ("teacher", "teacher_validation", "extraction", "passes", "transmiter_plus/base", "strong_fine_tuning",
            "strong_fine_tuning_validation")
    found = [u["seconds"] for u in unit_results if (u["unit"]["dataset"], u["unit"]["pair"]) == (dataset, pair)]
    return {k: float(np.mean([s[k] for s in found if k in s])) for k in keys if any(k in s for s in found)}


def goals(summary: list[dict[str, Any]], max_ratio: float = 0.25, min_share: float = 5 / 6) -> list[dict[str, Any]]:
    """The protocol's goals, checked per (dataset, pair, protocol)."""
    out = []
    for s in summary:
        cmp = {(c["a"], c["b"]): c for c in s["comparisons"]}
        n = len(s["splits"])

        def get(a: str, b: str) -> dict[str, Any]:
            return cmp[(a, b)]

        zs, px, en, ft = (get("transferred", "strong_zero_shot"), get("transferred", "proxy"),
                          get("transferred", "ensemble"), get("transmiter_plus", "strong_fine_tuned"))
        ratio = s["cost_ratios"].get("with_teacher", math.nan)
        checks = {
            "transferred > strong_zero_shot on every split": zs["splits"]["ahead"] == n,
            "transferred >= proxy on the mean": px["over_splits"]["mean"] >= 0,
            "transferred >= ensemble on the mean": en["over_splits"]["mean"] >= 0,
            "transmiter_plus >= strong_fine_tuned on the mean": ft["over_splits"]["mean"] >= 0,
            f"transmiter_plus >= strong_fine_tuned on >= {math.ceil(min_share * n)} of {n} splits":
                ft["splits"]["ahead"] + ft["splits"]["tied"] >= math.ceil(min_share * n),
            f"transmiter_plus time <= {max_ratio:.0%} of strong fine-tuning's, teacher counted": ratio <= max_ratio,
        }
        out.append({"dataset": s["dataset"], "pair": s["pair"], "protocol": s["protocol"], "checks": checks,
                    "time_ratio_with_teacher": ratio})
    return out


# -- the report --------------------------------------------------------------------------------------------
PROTOCOL_TITLES = {"all": "(a) choices on validation images of all classes",
                   "base": "(b) choices on base-class validation images only"}
TABLE_METHODS = ("strong_zero_shot", "teacher", "proxy", "ensemble", "transferred", "transmiter_plus_ce",
                 "transmiter_plus_v2", "transmiter_plus", "strong_fine_tuned", "transferred+unlabeled",
                 "transmiter_plus_v2+unlabeled", "transmiter_plus+unlabeled")


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _markdown_section(s: dict[str, Any]) -> list[str]:
    from vimw.transfer.protocol import label

    splits = s["splits"]
    lines = [f"### {s['dataset']}, {s['pair']}, {PROTOCOL_TITLES[s['protocol']]}", "",
             "HM per split (mean over seeds " + ", ".join(map(str, s["seeds"])) + "), then the mean over splits "
             "of base / novel / HM.", "",
             "| method | " + " | ".join(splits) + " | base | novel | HM |",
             "| --- | " + " | ".join("---:" for _ in splits) + " | ---: | ---: | ---: |"]
    for m in TABLE_METHODS:
        if m in s["split_means"]["hm"]:
            o = s["over_splits"][m]
            lines.append(f"| {label(m)} | " + " | ".join(_pct(s["split_means"]["hm"][m].get(x)) for x in splits)
                         + f" | {_pct(o['base'])} | {_pct(o['novel'])} | **{_pct(o['hm'])}** |")
    lines += ["", "| paired difference (HM points) | mean over splits | 95% interval | splits + / = / - | "
              "units + / = / - |", "| --- | ---: | --- | --- | --- |"]
    for c in s["comparisons"]:
        o, sp, un = c["over_splits"], c["splits"], c["units"]
        lines.append(f"| {label(c['a'])} - {label(c['b'])} | {100 * o['mean']:+.1f} | "
                     f"[{100 * o['low']:+.1f}, {100 * o['high']:+.1f}] | {sp['ahead']} / {sp['tied']} / {sp['behind']} | "
                     f"{un['ahead']} / {un['tied']} / {un['behind']} |")
    if s["cost_ratios"]:
        r = s["cost_ratios"]
        lines += ["", f"Time, TransMiter+ over strong fine-tuning (mean of per-unit ratios): {r['with_teacher']:.3f} with "
                      f"the teacher's fine-tuning, {r['without_teacher']:.3f} without it, {r['target_side']:.3f} on the "
                      f"target side alone; {r['with_teacher_over_training_only']:.3f} with the teacher against strong "
                      "fine-tuning without its validation passes."]
    return lines + [""]


def markdown(payload: dict[str, Any]) -> str:
    planned = payload["planned_units"]
    lines = [f"# TransMiter on {len(payload['units'])} of {planned} evaluation units",
             "", f"Protocol: `{payload['protocol']['path']}` (git blob `{payload['protocol']['sha']}`), committed "
             "before these results. Headline: image use (i), extraction and alignment on the few-shot base set only "
             "(as the reference); rows marked [unlabeled] are image use (ii), with extra unlabeled images.", "",
             "## Goals", ""]
    if len(payload["units"]) < planned:
        lines += [f"Not judged yet: {len(payload['units'])} of the protocol's {planned} units exist (every pair, split "
                  "and seed is asked). The checks below read the units that exist, as an interim view only.", ""]
    for g in payload["goals"]:
        lines.append(f"- {g['dataset']}, {g['pair']}, protocol {g['protocol']}: " + "; ".join(
            f"{name}: {'yes' if ok else '**no**'}" for name, ok in g["checks"].items()))
    lines += ["", "## Results", ""]
    for s in payload["summary"]:
        lines += _markdown_section(s)
    return "\n".join(lines)


def report(protocol: dict[str, Any]) -> dict[str, Any]:
    """transfer-splits.json and .md from the unit files written under the current protocol."""
    found = [json.loads(p.read_text()) for p in sorted(protocol_outputs(protocol, NAME)[0].glob("*.json"))]
    current = [u for u in found if u["protocol"]["sha"] == protocol["file"]["sha"]]
    if len(current) != len(found):
        print(f"left out {len(found) - len(current)} unit(s) written under another version of the protocol")
    if not current:
        raise SystemExit("no unit written under this protocol yet")
    summary = summarise(current)
    payload = {"protocol": protocol["file"], "rows": [{k: r[k] for k in ROW_KEYS} for u in current for r in u["rows"]],
               "units": [u["unit"] for u in current], "planned_units": sum(1 for _ in units(protocol)),
               "complete": len(current) == sum(1 for _ in units(protocol)), "summary": summary, "goals": goals(summary),
               "determinism": sorted({json.dumps(u["determinism"], sort_keys=True) for u in current}),
               "load_average": {"min_start": min(u["load_average"]["start"][0] for u in current),
                                "max_start": max(u["load_average"]["start"][0] for u in current)}}
    write_results(protocol_outputs(protocol, NAME)[1], payload, markdown(payload))
    return payload


# -- main --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default=str(PROTOCOL))
    parser.add_argument("--pairs", nargs="+", help="only these pairs (names in the protocol)")
    parser.add_argument("--splits", nargs="+", help="only these evaluation splits")
    parser.add_argument("--report", action="store_true", help="only write the report from the units")
    parser.add_argument("--commit", action="store_true", help="commit each unit's file on its own as it lands")
    parser.add_argument("--draw", action="store_true", help="print the random splits the protocol's rules draw")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    code_version()  # fixes the code this process runs for every unit it writes
    protocol = read_protocol(args.protocol)
    if args.draw:
        classes, dev = protocol["classes"], protocol["development"]["splits"]
        default, complement = classes[:5], classes[5:]
        print("development:", draw_splits(classes, len(dev), 124, [default, complement]))
        print("evaluation:", draw_splits(classes, 4, 24, [default, complement, *dev.values()]))
        return 0
    if not args.report:
        for pair, split, seed in units(protocol, args.pairs, args.splits):
            path = protocol_outputs(protocol, NAME)[0] / f"{unit_id(pair['name'], split, seed, protocol['task'])}.json"
            if path.exists() and json.loads(path.read_text())["protocol"]["sha"] == protocol["file"]["sha"]:
                continue
            if not claim(ROOT / "runs" / "transfer-splits-claims", path.name):
                continue  # another process runs it: several processes share one plan
            print(f"unit {path.stem}", flush=True)
            write_json(path, run_unit(protocol, pair, split, seed, cache=protocol["cache"],
                                      log=lambda m: print(m, flush=True)))
            if args.commit:
                commit_file(path, f"TransMiter splits unit: {pair['name']}, {split}, seed {seed}")
    payload = report(protocol)
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

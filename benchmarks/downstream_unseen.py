"""Downstream methods on tasks the zoo has never seen, true few-shot, under a protocol fixed in advance.

Reads ``benchmarks/protocol-unseen.yaml`` (issue 23). A unit is one (task, shots, seed): the
task's ``shots`` images per class drawn by the seed are the only labels (no validation
images); every method chooses its setting by cross-validation inside them
(``vimw.workflows.compare.cross_validate``: leave one image per class out, successive halving
over its grid; at 1 shot its grid's first setting), is trained on all of them and scored once
on the task's fixed test set. ``auto`` and ``best_zoo`` apply ``auto``'s rule
(``compare.choose_method``) to the same cross-validated numbers, so they cost nothing more and
are exactly what ``vimw aggregate --shots K`` chooses. The zoo is the task's
leave-overlap-out zoo (computed from the manifests); where the whole zoo differs from it, the
zoo methods run a second time on the whole zoo (the with-overlap table).

Each unit is written to ``results/downstream-unseen-units/`` when it finishes (a rerun resumes;
``--commit`` commits each unit file on its own), in seed-major order so that every task and
shot count has its first seeds early. ``--report`` writes ``results/downstream-unseen.{json,md}``.

    OMP_NUM_THREADS=1 nohup nice -n 10 .venv/bin/python benchmarks/downstream_unseen.py --commit > log 2>&1 &
    .venv/bin/python benchmarks/downstream_unseen.py --report
    .venv/bin/python benchmarks/downstream_unseen.py --dev --tasks fmnist-apparel photos --seeds 100 101

``--dev`` runs the same units on development tasks and seeds (given on the command line, not
read from the protocol) into ``results/dev/unseen-units/``: what the protocol's choices were
fixed on. At 1 shot it also trains every setting of each trained method's grid (their order
decides which one 1 shot uses).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, claim, command_line, commit_file, machine, protocol_outputs, write_results  # noqa: E402
from _common import code_version as common_code_version  # noqa: E402
from transfer_splits import blob_sha, deterministic, read_protocol, signs, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = Path(__file__).resolve().with_name("protocol-unseen.yaml")
NAME = "downstream-unseen"
AUTO_RULES = ("selection rule", "on evidence")  # how auto leaves scratch: the first protocol's rule, the library's since
DEV_UNITS = RESULTS / "dev" / "unseen-units"
CACHE = ROOT / "runs" / "unseen-cache"  # test-set features of the frozen models (no labels in them)
LOO, WHOLE = "leave-overlap-out", "with-overlap"


# -- the plan ---------------------------------------------------------------------------------------------
def plan_from_protocol(protocol: dict[str, Any]) -> dict[str, Any]:
    """What the evaluation runs, read from the protocol; refuses a library that differs from it."""
    ev = protocol["evaluation"]
    units, report = protocol_outputs(protocol, NAME)
    plan = {"tasks": {t["name"]: t["metric"] for t in ev["tasks"]}, "shots": list(ev["shots"]),
            "seeds": list(ev["seeds"]), "max_test": int(ev["max_test"]), "methods": list(ev["methods"]),
            "control_seed_offset": int(ev["controls"]["second_training_seed_offset"]),
            "max_folds": int(ev["selection"]["max_folds"]), "threads": int(protocol["threads"]),
            "zoo": protocol["zoo"]["dir"], "units": units, "report": report, "all_settings_at_one_shot": False,
            "auto_rule": ev["auto"].get("leave_fresh_module", AUTO_RULES[0]), "protocol": protocol["file"],
            **best_zoo_rule(ev)}
    if plan["auto_rule"] not in AUTO_RULES:
        raise SystemExit(f"unknown auto rule {plan['auto_rule']!r}: one of {AUTO_RULES}")
    check_library(protocol)
    return plan


def best_zoo_rule(ev: dict[str, Any]) -> dict[str, Any]:
    """Which zoo methods ``best_zoo`` chooses among and, where nothing can be held out (1 shot), their fixed
    order: the protocol's ``best_zoo`` section, or else (the first two protocols) the zoo methods among
    ``auto``'s candidates in the library's 1-shot order."""
    from vimw.methods import get_method

    rule = ev.get("best_zoo") or {}
    pool = list(rule.get("candidates") or [m for m in ev["auto"]["candidates"] if get_method(m).uses_zoo])
    order = list(rule.get("one_shot_order") or [])
    if not all(get_method(m).uses_zoo for m in pool) or sorted(order or pool) != sorted(pool):
        raise SystemExit(f"best_zoo must choose among zoo methods, its 1-shot order naming each once: {rule}")
    return {"best_zoo_pool": pool, "best_zoo_one_shot_order": order or None}


def check_library(protocol: dict[str, Any]) -> None:
    """The registered grids, auto's candidates, the fixed 1-shot order, the recipe and the zoo's
    scales must be the protocol's: a run never measures something other than what was fixed."""
    from vimw.methods import auto_candidates, get_method
    from vimw.methods.closed_form import ZOO_RIDGE_SCALE
    from vimw.workflows.compare import MAX_FOLDS, ONE_SHOT_ORDER, SearchSettings

    ev = protocol["evaluation"]
    found = {"grids": {m: [dict(s) for s in get_method(m).grid] for m in ev["grids"]},
             "auto_candidates": list(auto_candidates()), "one_shot_order": list(ONE_SHOT_ORDER),
             "recipe": {k: v for k, v in SearchSettings().to_dict().items() if k in ev["recipe"]},
             "zoo_ridge_scale": ZOO_RIDGE_SCALE, "max_folds": MAX_FOLDS}
    wanted = {"grids": {m: [dict(s or {}) for s in g] for m, g in ev["grids"].items()},
              "auto_candidates": list(ev["auto"]["candidates"]), "one_shot_order": list(ev["auto"]["one_shot_order"]),
              "recipe": dict(ev["recipe"]), "zoo_ridge_scale": float(ev["zoo_ridge_scale"]),
              "max_folds": int(ev["selection"]["max_folds"])}
    if "zoo_residual_scale" in ev:  # the third protocol's method
        from vimw.methods.residual import ZOO_RESIDUAL_SCALE

        found["zoo_residual_scale"], wanted["zoo_residual_scale"] = ZOO_RESIDUAL_SCALE, float(ev["zoo_residual_scale"])
    differ = [k for k in wanted if found[k] != wanted[k]]
    if differ:
        raise SystemExit("the library differs from the protocol in " + ", ".join(
            f"{k}: library {found[k]} vs protocol {wanted[k]}" for k in differ))


def dev_plan(args) -> dict[str, Any]:
    return {"tasks": {t: "balanced_accuracy" for t in args.tasks}, "shots": args.shots, "seeds": args.seeds,
            "max_test": 1000, "methods": ["ridge_probe", "zoo_ridge", "scratch", "linear_probe"],
            "control_seed_offset": 1000, "max_folds": 5, "threads": 1, "zoo": args.zoo, "units": DEV_UNITS,
            "all_settings_at_one_shot": True, "auto_rule": AUTO_RULES[0], "protocol": None,
            "best_zoo_pool": ["zoo_ridge"], "best_zoo_one_shot_order": None}


def code_version() -> str:
    """The commit the code ran at (``+changes`` when src/ or this benchmark differ from it)."""
    return common_code_version("src", "benchmarks/downstream_unseen.py")


# -- test metrics and cached test features -------------------------------------------------------------------
def test_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over classes) and log-loss of test logits."""
    logits, targets = logits.float().cpu(), targets.cpu()
    right = logits.argmax(1) == targets
    recalls = [float(right[targets == c].double().mean()) for c in targets.unique().tolist()]
    return {"accuracy": float(right.double().mean()), "balanced_accuracy": float(np.mean(recalls)),
            "loss": float(torch.nn.functional.cross_entropy(logits, targets))}


def test_features(model, method: str, task: str, names: list[str] | None, zoo, images: torch.Tensor) -> torch.Tensor:
    """A frozen model's features of the fixed test images, computed once per (task, method, zoo modules)."""
    from vimw.io import load_tensors, save_tensors
    from vimw.training.headfit import frozen_features

    index = zoo.read_index() if names else {}
    plugin = sum(float(v.double().sum()) for v in model.plugin.state_dict().values()) if model.plugin else 0.0
    key = json.dumps([task, method, sorted((n, index[n]["sha256"]) for n in names or []), plugin,
                      list(images.shape), float(images.double().sum())])
    path = CACHE / f"{task}-{method}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    if path.exists():
        return load_tensors(path)["features"]
    features = frozen_features(model, images).cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, {"features": features.contiguous()})
    return features


def final_test_logits(result, method: str, task: str, names, zoo, test) -> torch.Tensor:
    """Test logits of a trained method: cached features under a head when everything below it is frozen."""
    from vimw.evaluation import predict_logits
    from vimw.training.headfit import head_only

    model = result.model
    if head_only(model):  # the head is all that trained: the frozen features do not depend on the shots
        features = test_features(model, method if model.plugin is not None else "backbone", task, names, zoo,
                                 test.images)
        with torch.no_grad():
            model.eval()
            return model.head(features.to(next(model.parameters()).device)).cpu()
    return predict_logits(model, test.images).cpu()


# -- one unit -----------------------------------------------------------------------------------------------
def unit_name(task: str, shots: int, seed: int) -> str:
    return f"{task}__{shots}__s{seed}"


def run_methods(context, folds, methods, settings, zoo, names, test, task, plan) -> tuple[dict, dict]:
    """Each method cross-validated, trained on every labelled image and scored on test:
    ``(records, {method: MethodCV})``; ``records[m]["logits"]`` holds its test logits (dropped before writing)."""
    from vimw.methods import get_method
    from vimw.workflows.compare import cross_validate, train_chosen

    records, cvs = {}, {}
    for method in methods:
        started = time.perf_counter()
        cv = cvs[method] = cross_validate(context, method, settings, folds)
        config, result = train_chosen(context, cv, settings)
        logits = final_test_logits(result, method, task, names if get_method(method).uses_zoo else None, zoo, test)
        records[method] = {"setting": cv.setting, "cross_validation": cv.to_dict(), "logits": logits,
                           "seconds": {"cv": round(cv.seconds, 2), "final": round(result.seconds, 2),
                                       "all": round(time.perf_counter() - started, 2)},
                           "final": result.info.get("head"), "trainable": result.trainable, "config": config.to_dict()}
        if plan["all_settings_at_one_shot"] and not folds and len(get_method(method).grid) > 1:
            for setting in get_method(method).grid[1:]:  # development only: which setting 1 shot should use
                _, other = train_chosen(context, type(cv)(method, dict(setting), "development"), settings)
                label = method + "@" + ",".join(f"{k}={v:g}" for k, v in setting.items())
                records[label] = {"setting": dict(setting), "logits": final_test_logits(other, method, task, None,
                                                                                          zoo, test)}
    return records, cvs


def choices(cvs: dict, candidates, rule: str = AUTO_RULES[0], zoo_pool=None, zoo_one_shot_order=None) -> dict[str, Any]:
    """What ``auto`` and ``best_zoo`` keep from these cross-validated numbers, and the zoo's estimated
    gain. ``rule``: how ``auto`` leaves the fresh module: by the selection rule alone (the first
    protocol's), or only on evidence (``compare.choose_auto``: a paired 95% interval above zero).
    ``best_zoo`` applies the selection rule among ``zoo_pool`` (default: the zoo methods among
    ``candidates``); with nothing held out, the first of ``zoo_one_shot_order`` (default: the library's)."""
    from vimw.methods import get_method
    from vimw.workflows.compare import ONE_SHOT_ORDER, choose_auto, choose_method, zoo_gain

    pool = [m for m in candidates if m in cvs]
    auto = (choose_method if rule == AUTO_RULES[0] else choose_auto)(cvs, pool)
    zoo_methods = zoo_pool or [m for m in pool if get_method(m).uses_zoo]
    best_zoo = choose_method(cvs, zoo_methods, zoo_one_shot_order or ONE_SHOT_ORDER)
    gain = zoo_gain(cvs, best_zoo)
    return {"auto": auto, "best_zoo": best_zoo, "zoo_gain": None if gain is None else gain.to_dict(),
            "says": None if gain is None else gain.sentence(auto)}


def run_unit(task: str, shots: int, seed: int, plan: dict[str, Any], backbone, zoo) -> dict[str, Any]:
    from vimw.data import load_task, resolve_task
    from vimw.methods import auto_candidates, get_method
    from vimw.workflows.compare import SearchSettings, few_shot_context, train_chosen
    from vimw.zoo.overlap import leave_overlap_out, module_tasks, zoo_overlaps

    started, load_before = time.perf_counter(), os.getloadavg()
    data = load_task(task, shots=shots, seed=seed, max_test=plan["max_test"])  # split seed = seed
    settings = SearchSettings(seed=seed)  # training seed = seed
    test = data.test
    whole = sorted(zoo.names())
    loo = leave_overlap_out(zoo, task)
    zoos = {LOO: loo, **({WHOLE: whole} if whole != loo else {})}
    methods = plan["methods"]
    out: dict[str, Any] = {"task": task, "shots": shots, "seed": seed, "metric": plan["tasks"][task], "zoos": zoos,
                           "overlaps": {n: [str(r) for r in rs] for n, rs in
                                        zoo_overlaps(module_tasks(zoo), resolve_task(task)).items() if rs},
                           "labelled_images": len(data.train), "test_images": len(test), "methods": {}}
    logits: dict[tuple[str, str], torch.Tensor] = {}
    for variant, names in zoos.items():
        context, folds = few_shot_context(backbone, data, zoo, names, seed, plan["max_folds"])
        run = methods if variant == LOO else [m for m in methods if get_method(m).uses_zoo]
        records, cvs = run_methods(context, folds, run, settings, zoo, names, test, task, plan)
        if variant == LOO:
            base_cvs = cvs
            out["folds"] = len(folds)
            # The control: the same scratch setting with a second training seed, probabilities averaged.
            second = settings.replace(seed=seed + plan["control_seed_offset"])
            _, other = train_chosen(context, cvs["scratch"], second)
            logits[(variant, "scratch@seed2")] = final_test_logits(other, "scratch", task, None, zoo, test)
            records["scratch@seed2"] = {"setting": cvs["scratch"].setting, "seed": second.seed}
            probs = (records["scratch"]["logits"].softmax(1) + logits[(variant, "scratch@seed2")].softmax(1)) / 2
            logits[(variant, "scratch_x2")] = probs.clamp_min(1e-12).log()
            records["scratch_x2"] = {"of": ["scratch", "scratch@seed2"]}
        else:
            cvs = {**{m: c for m, c in base_cvs.items() if not get_method(m).uses_zoo}, **cvs}
        picked = choices(cvs, auto_candidates(), plan["auto_rule"], plan["best_zoo_pool"],
                         plan["best_zoo_one_shot_order"])
        for method, record in records.items():
            if "logits" in record:
                logits[(variant, method)] = record.pop("logits")
        for label in ("auto", "best_zoo"):
            chosen = picked[label]
            if chosen is not None:  # the chosen method's own run: a choice costs no training of its own
                logits[(variant, label)] = logits.get((variant, chosen), logits.get((LOO, chosen)))
                records[label] = {"chosen": chosen}
        out["methods"][variant] = records
        out.setdefault("choices", {})[variant] = picked
    for (variant, method), values in logits.items():
        out["methods"][variant][method]["test"] = test_metrics(values, test.targets)
    out.update(seconds=round(time.perf_counter() - started, 1), load_average={"start": load_before,
                                                                             "end": os.getloadavg()},
               code=plan.get("code") or code_version(), machine=machine(), command=command_line(),
               auto_rule=plan["auto_rule"])
    if plan["protocol"] is not None:
        out["protocol"] = plan["protocol"]
    return out


def run_all(plan: dict[str, Any], *, tasks=None, shots=None, seeds=None, commit_units: bool = False) -> None:
    from vimw.backbones import create_backbone
    from vimw.zoo import Zoo

    print(deterministic(plan["threads"]), flush=True)
    plan = {**plan, "code": code_version()}  # the code this process loaded (later commits do not change it)
    zoo = Zoo(plan["zoo"])
    backbone = create_backbone("efficientnet_lite0", image_size=64).eval()
    for seed in seeds or plan["seeds"]:  # seed-major: every cell has its first seeds early
        for task in tasks or plan["tasks"]:
            for k in shots or plan["shots"]:
                path = plan["units"] / f"{unit_name(task, k, seed)}.json"
                if path.exists() or not claim(ROOT / "runs" / f"{plan['units'].name}-claims", path.name):
                    continue
                unit = run_unit(task, k, seed, plan, backbone, zoo)
                write_json(path, unit)
                print(f"{path.name}: {unit['seconds']} s; " + ", ".join(
                    f"{m} {r['test'][unit['metric']]:.3f}" for m, r in unit["methods"][LOO].items() if "test" in r),
                      flush=True)
                if commit_units:
                    what = "development" if plan["protocol"] is None else "evaluation"
                    commit_file(path, f"downstream-unseen {what} unit {task}, {k} shots, seed {seed}")


# -- the report ---------------------------------------------------------------------------------------------
MAIN_METHODS = ("scratch", "scratch_x2", "linear_probe", "ridge_probe", "zoo_ridge", "best_zoo", "auto")
VERSUS = (("best_zoo", "scratch"), ("auto", "scratch"), ("zoo_ridge", "ridge_probe"), ("best_zoo", "scratch_x2"),
          ("ridge_probe", "scratch"), ("linear_probe", "scratch"), ("scratch_x2", "scratch"))


def report_methods(plan: dict[str, Any]) -> tuple[tuple, tuple, tuple]:
    """The main table's methods and paired differences, and the second table's methods: the first two
    protocols' columns, plus each further method a protocol runs (paired with ``scratch``)."""
    extra = tuple(m for m in plan["methods"] if m not in MAIN_METHODS)
    main = MAIN_METHODS[:5] + extra + MAIN_METHODS[5:]
    versus = VERSUS[:2] + tuple((m, "scratch") for m in extra) + VERSUS[2:]
    zoo_extra = tuple(m for m in extra if m in plan["best_zoo_pool"])
    return main, versus, ("scratch", "zoo_ridge", *zoo_extra, "best_zoo", "auto")


def flat_rows(units: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (zoo, task, shots, seed, method): ``test`` is the task's metric."""
    rows = []
    for u in units:
        for variant, records in u["methods"].items():
            for method, r in records.items():
                if "test" in r:
                    rows.append({"zoo": variant, "task": u["task"], "shots": u["shots"], "seed": u["seed"],
                                 "method": method, "test": r["test"][u["metric"]], "metric": u["metric"],
                                 "accuracy": r["test"]["accuracy"], "chosen": r.get("chosen"),
                                 "setting": r.get("setting")})
    return rows


def table(rows, variant: str) -> dict:
    """{(task, shots): {method: {seed: test}}} for one zoo variant; the whole zoo borrows the
    leave-overlap-out numbers of methods that do not use the zoo (they are the same runs)."""
    out: dict = {}
    for r in rows:
        if r["zoo"] == variant or (variant == WHOLE and r["zoo"] == LOO):
            cell = out.setdefault((r["task"], r["shots"]), {}).setdefault(r["method"], {})
            if r["zoo"] == variant or r["seed"] not in cell:
                cell[r["seed"]] = r["test"]
    return out


def paired(cell: dict, a: str, b: str) -> dict | None:
    from vimw.workflows.compare import mean_interval

    if a not in cell or b not in cell:
        return None
    seeds = sorted(set(cell[a]) & set(cell[b]))
    diffs = [100.0 * (cell[a][s] - cell[b][s]) for s in seeds]
    return {**mean_interval(diffs), **signs(diffs)} if diffs else None


def over_tasks(tab: dict, shots: int, a: str, b: str, tasks: list[str]) -> dict | None:
    """``a - b`` averaged over ``tasks`` per seed (seeds every task has), with a t interval over seeds."""
    from vimw.workflows.compare import mean_interval

    cells = [tab.get((t, shots), {}) for t in tasks]
    if not all(a in c and b in c for c in cells):
        return None
    seeds = sorted(set.intersection(*[set(c[a]) & set(c[b]) for c in cells]))
    diffs = [float(np.mean([100.0 * (c[a][s] - c[b][s]) for c in cells])) for s in seeds]
    return {**mean_interval(diffs), **signs(diffs)} if diffs else None


def fmt(s: dict | None) -> str:
    if not s:
        return "-"
    if s["n"] < 2:
        return f"{s['mean']:+.1f} (n=1)"
    return f"{s['mean']:+.1f} [{s['low']:+.1f}, {s['high']:+.1f}] {s['ahead']}/{s['behind']}"


def spread(units: list[dict[str, Any]]) -> dict:
    """``scratch``'s spread per (task, shots), in points: the training seed alone (the two runs on one
    split), and the split (what is left of the total over seeds)."""
    out = {}
    groups: dict = {}
    for u in units:
        r = u["methods"][LOO]
        if "scratch@seed2" in r and "test" in r["scratch@seed2"]:
            groups.setdefault((u["task"], u["shots"]), []).append(
                (100 * r["scratch"]["test"][u["metric"]], 100 * r["scratch@seed2"]["test"][u["metric"]]))
    for key, pairs in groups.items():
        if len(pairs) < 2:
            continue
        a = np.array(pairs)
        train_var = float(np.mean((a[:, 0] - a[:, 1]) ** 2) / 2)
        total_var = float(np.var(a.reshape(-1), ddof=1))
        out[key] = {"training_sd": math.sqrt(train_var), "split_sd": math.sqrt(max(0.0, total_var - train_var)),
                    "total_sd": math.sqrt(total_var), "splits": len(pairs)}
    return out


MIN_SEEDS = 5  # the protocol's analysis set: goals are judged on at least this many complete seeds


def goals(tab: dict, tasks: list[str], shots: list[int], complete: int) -> list[dict]:
    if complete < MIN_SEEDS:
        return [{"goal": f"not judged yet: {complete} seed(s) complete for every task and shot count, the protocol "
                         f"asks {MIN_SEEDS}", "met": None}]
    out = []
    for k in (s for s in (1, 2, 5) if s in shots):
        s = over_tasks(tab, k, "best_zoo", "scratch", tasks)
        out.append({"goal": f"best_zoo beats scratch on the mean over unseen tasks at {k} shots (95% interval > 0)",
                    "stat": s, "met": bool(s and s["n"] >= 2 and s["low"] > 0)})
    worse = []
    for (task, k), cell in sorted(tab.items()):
        s = paired(cell, "auto", "scratch")
        if s and s["n"] >= 2 and s["high"] < 0:
            worse.append({"task": task, "shots": k, **s})
    out.append({"goal": "auto is never worse than scratch beyond its interval on any task (and shot count)",
                "cells_worse": worse, "met": not worse})
    return out


def report(plan: dict[str, Any], protocol: dict[str, Any] | None) -> dict[str, Any]:
    files = sorted(plan["units"].glob("*.json"))
    units = [json.loads(p.read_text()) for p in files]
    if plan["protocol"] is not None:
        stale = [u for u in units if u.get("protocol", {}).get("sha") != plan["protocol"]["sha"]]
        if stale:
            raise SystemExit(f"{len(stale)} units ran under another protocol version: {stale[0]['task']} ...")
    rows = flat_rows(units)
    tasks = list(plan["tasks"])
    complete = sorted(s for s in plan["seeds"] if all((plan["units"] / f"{unit_name(t, k, s)}.json").exists()
                                                     for t in tasks for k in plan["shots"]))
    # every table, count and spread reads the complete seeds only (all units while no seed is complete)
    analysed = [u for u in units if u["seed"] in complete] or units
    main, whole = (complete_table(rows, complete, variant) for variant in (LOO, WHOLE))
    payload = {"protocol": plan["protocol"], "rows": rows, "seeds_complete": complete,
               "units": len(units), "units_planned": len(tasks) * len(plan["shots"]) * len(plan["seeds"]),
               "goals": goals(main, tasks, plan["shots"], len(complete)),
               "units_per_seed": {s: sum(1 for u in units if u["seed"] == s) for s in plan["seeds"]},
               "spread": {f"{t}/{k}": v for (t, k), v in spread(analysed).items()}}
    return {"payload": payload, "markdown": markdown(payload, analysed, main, whole, tasks, plan, protocol)}


def complete_table(rows, complete, variant: str) -> dict:
    """The per-cell table of one zoo variant over the ``complete`` seeds only: what the goals judge."""
    return table([r for r in rows if r["seed"] in complete], variant)


def unit_cells(units, tasks, shots):
    """``(task, shots, units)`` for every cell that has units, in table order (``units`` are already the
    analysed ones: the complete seeds')."""
    for t in tasks:
        for k in shots:
            us = [u for u in units if u["task"] == t and u["shots"] == k]
            if us:
                yield t, k, us


def markdown(payload, units, main, whole, tasks, plan, protocol) -> str:
    metric = {t: m for t, m in plan["tasks"].items()}
    lines = [f"# Downstream methods on unseen tasks, true few-shot (issue 23)", ""]
    if plan["protocol"]:
        lines += [f"Protocol: `{plan['protocol']['path']}` (git blob `{plan['protocol']['sha']}`), committed before "
                  "any of these results; the methods, grids, rules and statistics are its.", ""]
    lines += [f"Units: {payload['units']} of {payload['units_planned']} planned; seeds complete for every task and "
              f"shot count: {payload['seeds_complete'] or 'none yet'} (the tables use those seeds only).", "",
              "Metric: " + ", ".join(f"{t} {m.replace('_', ' ')}" for t, m in metric.items()) + ". "
              "Differences are in points, paired per seed (same shots, same test set), with a 95% t interval "
              "over seeds and the count of seeds ahead/behind; \"better\" only where the interval excludes zero.", ""]
    zoos = {u["task"]: u for u in units}
    lines += ["## The zoo each task uses (overlap computed from the module manifests)", "",
              "| task | leave-overlap-out zoo | modules left out (why) |", "|---|---|---|"]
    for t in tasks:
        u = zoos.get(t)
        if u:
            why = "; ".join(f"{n} ({', '.join(r)})" for n, r in u["overlaps"].items()) or "none"
            lines.append(f"| {t} | {len(u['zoos'][LOO])} modules | {why} |")
    main_methods, main_versus, second_methods = report_methods(plan)
    for title, tab, methods, versus in (
            ("Main table: leave-overlap-out zoos", main, main_methods, main_versus),
            ("Second table: the whole zoo, overlapping modules included (tasks where it differs)", whole,
             second_methods, (("best_zoo", "scratch"), ("auto", "scratch")))):
        cells = [(t, k) for t in tasks for k in plan["shots"] if (t, k) in tab]
        if title.startswith("Second"):
            cells = [c for c in cells if zoos.get(c[0]) and WHOLE in zoos[c[0]]["zoos"]]
        lines += ["", f"## {title}", "", "Mean test metric over seeds:", "",
                  "| task | shots | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
        for t, k in cells:
            vals = [f"{np.mean(list(tab[(t, k)][m].values())):.4f}" if m in tab[(t, k)] else "-" for m in methods]
            lines.append(f"| {t} | {k} | " + " | ".join(vals) + " |")
        lines += ["", "Paired differences (points):", "", "| task | shots | " + " | ".join(f"{a} - {b}" for a, b in versus)
                  + " |", "|---|---|" + "---|" * len(versus)]
        for t, k in cells:
            lines.append(f"| {t} | {k} | " + " | ".join(fmt(paired(tab[(t, k)], a, b)) for a, b in versus) + " |")
        if title.startswith("Main"):
            for k in plan["shots"]:
                lines.append(f"| mean over tasks | {k} | " + " | ".join(fmt(over_tasks(tab, k, a, b, tasks))
                                                                      for a, b in versus) + " |")
    lines += ["", "## What auto chose (leave-overlap-out zoos)", "", "| task | shots | " + " | ".join(
        ("ridge_probe", "scratch", "zoo_ridge")) + " | zoo gain said helps / no evidence / hurts |", "|---|---|---|---|---|---|"]
    for t, k, us in unit_cells(units, tasks, plan["shots"]):
        picks = [u["choices"][LOO]["auto"] for u in us]
        verdicts = [(u["choices"][LOO]["zoo_gain"] or {}).get("verdict", "none") for u in us]
        lines.append(f"| {t} | {k} | " + " | ".join(str(picks.count(m)) for m in ("ridge_probe", "scratch", "zoo_ridge"))
                     + f" | {verdicts.count('helps')} / {verdicts.count('no evidence')} / {verdicts.count('hurts')}"
                     + (f" (none: {verdicts.count('none')})" if "none" in verdicts else "") + " |")
    if len(plan["best_zoo_pool"]) > 1:
        pool = plan["best_zoo_pool"]
        lines += ["", "## What best_zoo chose (leave-overlap-out zoos)", "",
                  "| task | shots | " + " | ".join(pool) + " | the pick scored below the other on test |",
                  "|---|---|" + "---|" * (len(pool) + 1)]
        for t, k, us in unit_cells(units, tasks, plan["shots"]):
            picks = [u["choices"][LOO]["best_zoo"] for u in us]
            tests = [{m: u["methods"][LOO][m]["test"][u["metric"]] for m in pool} for u in us]
            worse = sum(scores[pick] < max(scores.values()) for pick, scores in zip(picks, tests))
            lines.append(f"| {t} | {k} | " + " | ".join(str(picks.count(m)) for m in pool) + f" | {worse} |")
    lines += ["", "## Spread of scratch: the training seed alone vs the split (sd in points)", "",
              "| task | shots | training seed | split | total | splits |", "|---|---|---|---|---|---|"]
    for key, v in payload["spread"].items():
        t, k = key.split("/")
        lines.append(f"| {t} | {k} | {v['training_sd']:.1f} | {v['split_sd']:.1f} | {v['total_sd']:.1f} | {v['splits']} |")
    lines += ["", "## Cost per unit (seconds, mean over units; cross-validation and the final fit)", "",
              "| shots | " + " | ".join(plan["methods"]) + " | auto (its candidates' cross-validation + the chosen "
              "fit) | auto / scratch |", "|---|" + "---|" * (len(plan["methods"]) + 2)]
    for k in plan["shots"]:
        us = [u for u in units if u["shots"] == k]
        if not us:
            continue
        cost = {m: np.mean([u["methods"][LOO][m]["seconds"]["all"] for u in us]) for m in plan["methods"]}
        auto = np.mean([sum(u["methods"][LOO][m]["seconds"]["cv"] for m in ("ridge_probe", "scratch", "zoo_ridge"))
                        + u["methods"][LOO][u["choices"][LOO]["auto"]]["seconds"]["final"] for u in us])
        lines.append(f"| {k} | " + " | ".join(f"{cost[m]:.0f}" for m in plan["methods"])
                     + f" | {auto:.0f} | {auto / cost['scratch']:.2f} |")
    lines += ["", "## Goals", ""]
    for g in payload["goals"]:
        if g["met"] is None:
            lines.append(f"- {g['goal']} (units per seed: " + ", ".join(
                f"{s}: {n}" for s, n in payload["units_per_seed"].items()) + ")")
        elif "stat" in g:
            lines.append(f"- {g['goal']}: **{'met' if g['met'] else 'not met'}** ({fmt(g['stat'])})")
        else:
            worse = "; ".join(f"{w['task']} at {w['shots']} shots {fmt(w)}" for w in g["cells_worse"]) or "no cell"
            lines.append(f"- {g['goal']}: **{'met' if g['met'] else 'not met'}** (worse beyond the interval: {worse})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default=str(PROTOCOL))
    parser.add_argument("--report", action="store_true", help="only the report, from the units that exist")
    parser.add_argument("--commit", action="store_true", help="commit each unit file as it lands")
    parser.add_argument("--dev", action="store_true", help="development tasks and seeds from the command line")
    parser.add_argument("--tasks", nargs="+")
    parser.add_argument("--shots", nargs="+", type=int)
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--zoo", default="runs/zoo")
    args = parser.parse_args(argv)
    if args.dev:
        if not (args.tasks and args.seeds and all(s >= 100 for s in args.seeds)):
            raise SystemExit("--dev needs --tasks and development --seeds (100 or more)")
        args.shots = args.shots or [1, 2, 5, 10]
        plan, protocol = dev_plan(args), None
    else:
        protocol = read_protocol(args.protocol)
        plan = plan_from_protocol(protocol)
    if not args.report:
        run_all(plan, tasks=None if args.dev else args.tasks, shots=None if args.dev else args.shots,
                seeds=None if args.dev else args.seeds, commit_units=args.commit)
    made = report(plan, protocol)
    if args.dev:
        from vimw.io import atomic_write_text

        atomic_write_text(RESULTS / "dev" / "unseen.md", made["markdown"] + "\n")
    else:
        write_results(plan["report"], made["payload"], made["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

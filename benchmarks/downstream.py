"""ViM downstream benchmark: the zoo methods against the baselines, few-shot, resumable per unit.

    python benchmarks/downstream.py [--zoo runs/zoo-default] [--tasks ...] [--shots 5 10 20]
                                    [--seeds 0 1 2] [--workers 2 --worker 0] [--device cpu|cuda]

A *unit* is one (task, shots, seed). In each unit every method trains in the same harness
on the same k-shot split (validation carved from training data) with the same
augmentation (random resized crops and shifts; mirrors only where the task declares
them label-safe), its settings chosen on validation by the one selection rule
(``vimw.evaluation.selection``); the kept model is scored once on test. Two rows are
derived from the others, never by looking at test:

- ``auto``: the method ``vimw aggregate`` (default ``--method auto``) keeps, among
  ``vimw.methods.auto_candidates()``, by validation accuracy, ties broken by loss;
- ``best_zoo``: the zoo method (any of ``vimw.methods.zoo_methods()`` that ran) kept the same way.

Each finished unit is written to ``results/downstream-units/<task>-k<shots>-s<seed>.json``
(``results/<name>-units/`` for another ``--name``, e.g. another zoo)
(kept in the repository); a rerun skips the units already there (same methods and
settings), so an interrupted run continues where it stopped, and a rerun with more
methods trains only the ones a unit lacks. After every unit the
summary ``results/<name>.{json,md}`` is rebuilt from all unit files: per task, shots and
method (test and validation accuracy, validation loss), averages over tasks with and
without the tasks that overlap the zoo, and which units ran on which machine.

``--cv K``: choose ``auto`` and ``best_zoo`` by K-fold cross-validation over the labelled
images instead (each method retrained on every fold; the models scored on test are the
holdout run's), written under the name ``downstream-cvK``.
``--workers N --worker I``: run every N-th unit (start one process per core).
``--tasks`` takes any task spec, including ``folder:DIR`` and ``npz:FILE``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, ensure_zoo, machine, write_results  # noqa: E402

import torch  # noqa: E402

from vimw.backbones import create_backbone  # noqa: E402
from vimw.data import load_task  # noqa: E402
from vimw.io import atomic_write_text  # noqa: E402
from vimw.methods import auto_candidates, list_methods, zoo_methods  # noqa: E402
from vimw.workflows.compare import MethodRow, SearchSettings, choose, compare_methods, kfold_metrics  # noqa: E402
from vimw.workflows.midstream import DEFAULT_BACKBONE, DEFAULT_IMAGE_SIZE  # noqa: E402

TASKS = ("fmnist-footwear-bags", "fmnist", "digits8x8")
SHOTS = (5, 10, 20)
SEEDS = (0, 1, 2)
# topk, merge, single and full_ft are left out by default to fit ~90 min on 2 cores;
# their last complete measurement is in git history (15b63db). Pass --methods to add them.
DEFAULT_METHODS = ("linear_probe", "scratch", "uniform", "ens", "gates_ridge", "gates_cma", "zoo_init", "zoo_init_gated")
DERIVED = ("auto", "best_zoo")
UNITS = RESULTS / "downstream-units"
# Downstream tasks whose classes a zoo module was trained on (declared, not hidden): the
# default zoo's fmnist-apparel module learned 6 of fmnist's 10 classes from the same
# Fashion-MNIST training file the shots come from. Averages are reported with and without.
OVERLAPS = {"fmnist": "6 of its 10 classes (the apparel) are the zoo module fmnist-apparel's task, "
                      "drawn from the same Fashion-MNIST training file"}


def slug(task: str) -> str:
    """A file-name-safe form of a task spec (``folder:/data/x`` -> ``folder-data-x``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", task).strip("-")


def units_dir(name: str) -> Path:
    """Where a run's finished units go: one folder per summary name, so two zoos never mix."""
    return UNITS if name == "downstream" else RESULTS / f"{name}-units"


def unit_path(name: str, task: str, shots: int, seed: int) -> Path:
    return units_dir(name) / f"{slug(task)}-k{shots}-s{seed}.json"


def unit_settings(args, *, cv: bool = True) -> dict:
    settings = {"methods": list(args.methods), "target_steps": args.target_steps, "max_test": args.max_test,
                "augment": not args.no_augment}
    if cv and args.cv:
        settings["cv"] = args.cv
    return settings


def load_unit(path: Path, settings: dict) -> list[MethodRow] | None:
    """The rows of a finished unit made with the same settings, else ``None``."""
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    if payload.get("settings") != settings:
        return None
    return [MethodRow(**r) for r in payload["rows"]]


def _print_row(row: MethodRow, _result=None) -> None:
    print(f"  {row.task} k={row.shots} s={row.seed} {row.method:13s} val {row.val:.4f} (loss {row.val_loss:.4f}) "
          f"test {row.test:.4f} lr {row.lr:g} ({row.search_seconds:.1f} s)", flush=True)


def earlier_rows(path: Path, settings: dict) -> list[MethodRow]:
    """The trained methods' rows, among ``settings["methods"]``, of a unit made with the same
    other settings: a rerun with more methods trains only the missing ones, and a run with
    fewer reuses the ones it asks for (same split, same seeds)."""
    if not path.is_file():
        return []
    payload = json.loads(path.read_text())
    old = dict(payload.get("settings") or {})
    if {k: v for k, v in old.items() if k != "methods"} != {k: v for k, v in settings.items() if k != "methods"}:
        return []
    return [MethodRow(**r) for r in payload["rows"] if r["method"] in settings["methods"]]


def _search(args, seed: int) -> SearchSettings:
    """Every method's training recipe in this run (the same as ``vimw aggregate``'s)."""
    return SearchSettings(steps=args.target_steps, augment=not args.no_augment, seed=seed)


def run_unit(args, backbone, zoo, task: str, shots: int, seed: int) -> list[MethodRow]:
    started = time.perf_counter()
    data = load_task(task, shots=shots, seed=seed, max_test=args.max_test)
    # with --cv, the models scored on test are the holdout run's (same split, same settings):
    # reuse them; without, a rerun trains only the methods the unit lacks
    source = unit_path("downstream", task, shots, seed) if args.cv else unit_path(args.name, task, shots, seed)
    kept = {r.method: r for r in earlier_rows(source, unit_settings(args, cv=False))}
    if kept:
        print(f"  kept from the earlier {'holdout ' if args.cv else ''}run: {', '.join(kept)}", flush=True)
    missing = [m for m in args.methods if m not in kept]
    new = compare_methods(backbone, data, missing, zoo=zoo, shots=shots, settings=_search(args, seed),
                          on_result=_print_row) if missing else []
    fresh = {r.method: r for r in new}
    rows = [kept.get(m) or fresh[m] for m in args.methods]
    cv_metrics = kfold_metrics(backbone, data, args.methods, folds=args.cv, zoo=zoo, shots=shots,
                               settings=_search(args, seed),
                               on_result=_print_row) if args.cv else None
    for label, among in (("auto", auto_candidates()), ("best_zoo", zoo_methods())):
        derived = choose(rows, among, label, metrics=cv_metrics,
                         selection=f"{args.cv}-fold cross-validation" if args.cv else None)
        if derived is not None:
            rows.append(derived)
            print(f"  {task} k={shots} s={seed} {label:13s} chose {derived.chosen}: test {derived.test:.4f}", flush=True)
    units_dir(args.name).mkdir(parents=True, exist_ok=True)
    atomic_write_text(unit_path(args.name, task, shots, seed), json.dumps({
        "command": command_line(), "machine": machine(), "settings": unit_settings(args),
        "unit": {"task": task, "shots": shots, "seed": seed}, "zoo": [name for name, _ in zoo.list()],
        "seconds": round(time.perf_counter() - started, 1), "rows": [r.to_dict() for r in rows],
        **({"cv": cv_metrics} if cv_metrics else {}),
        **({"kept_from_earlier_run": sorted(kept)} if kept else {}),  # "seconds" is this run's only
    }, indent=2) + "\n")
    return rows


# -- the summary ------------------------------------------------------------------------------------
def _mean(values) -> float:
    values = [v for v in values if v == v]
    return statistics.fmean(values) if values else float("nan")


def summarise_rows(rows: list[MethodRow]) -> list[dict]:
    groups: dict[tuple, list[MethodRow]] = {}
    for row in rows:
        groups.setdefault((row.task, row.shots, row.method), []).append(row)
    summary = []
    for (task, shots, method), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        tests = [m.test for m in members]
        chosen = [m.chosen for m in members if m.chosen]
        summary.append({
            "task": task, "shots": shots, "method": method, "seeds": len(members),
            "test_mean": statistics.fmean(tests), "test_std": statistics.pstdev(tests) if len(tests) > 1 else 0.0,
            "val_mean": _mean(m.val for m in members), "val_loss_mean": _mean(m.val_loss for m in members),
            "trainable": members[0].trainable, "seconds_mean": _mean(m.search_seconds for m in members),
            "chosen": {c: chosen.count(c) for c in sorted(set(chosen))},
        })
    return summary


def averages(summary: list[dict], methods: list[str], exclude: tuple[str, ...] = ()) -> list[str]:
    """Mean over tasks of the per-task mean test accuracy, per shots (only shots every task has)."""
    tasks = sorted({s["task"] for s in summary if s["task"] not in exclude})
    lines = ["| shots | tasks | " + " | ".join(methods) + " |", "|---:|---:|" + "---:|" * len(methods)]
    for shots in sorted({s["shots"] for s in summary}):
        cells = []
        for method in methods:
            values = [s["test_mean"] for s in summary if s["shots"] == shots and s["method"] == method
                      and s["task"] in tasks]
            cells.append(f"{statistics.fmean(values):.4f}" if len(values) == len(tasks) and values else "-")
        lines.append(f"| {shots} | {len(tasks)} | " + " | ".join(cells) + " |")
    return lines


def report(args, all_rows: list[MethodRow], units: list[dict], started: float) -> str:
    summary = summarise_rows(all_rows)
    methods = [m for m in list(args.methods) + list(DERIVED) if any(s["method"] == m for s in summary)]
    lines = [
        "| task | shots | method | test acc (mean ± std) | val acc | val loss | seeds | trainable | search time (s) | chose |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in summary:
        chose = ", ".join(f"{k} {v}" for k, v in s["chosen"].items())
        lines.append(f"| {s['task']} | {s['shots']} | {s['method']} | {s['test_mean']:.4f} ± {s['test_std']:.4f} | "
                     f"{s['val_mean']:.4f} | {s['val_loss_mean']:.4f} | {s['seeds']} | {s['trainable']:,} | "
                     f"{s['seconds_mean']:.1f} | {chose} |")
    overlap = [t for t in OVERLAPS if any(s["task"] == t for s in summary)]
    lines += ["", "Average over tasks (test accuracy; a cell is filled only when every task has that shots count):",
              "", *averages(summary, methods)]
    if overlap:
        lines += ["", f"Without {', '.join(overlap)} (overlaps the zoo: " + "; ".join(
            f"{t}: {OVERLAPS[t]}" for t in overlap) + "):", "", *averages(summary, methods, tuple(overlap))]
    zoo_names = next((u["zoo"] for u in units if u.get("zoo")), None)
    lines += ["", *goal_checks(summary), "", *selection_diagnostics(all_rows), "", *gate_fit_table(all_rows, zoo_names)]
    expected = [(t, k, s) for k in args.shots for t in args.tasks for s in args.seeds]
    done = {(u["task"], u["shots"], u["seed"]) for u in units}
    missing = [f"{t} k={k} s={s}" for t, k, s in expected if (t, k, s) not in done]
    lines += ["", f"Units finished: {len(done & set(expected))} of {len(expected)}"
              + (f"; not run: {', '.join(missing)}" if missing else "") + ".",
              ("Selection: holdout validation split (as many images per class as shots); " if not args.cv else
               f"Selection of `auto` and `best_zoo`: {args.cv}-fold cross-validation over the labelled images "
               "(training + validation pooled; each method's settings searched within each fold), the chosen "
               "method's model being the holdout run's; ")
              + "every setting's and candidate's validation accuracy and loss are in the JSON rows.",
              f"Augmentation: {'on' if not args.no_augment else 'off'} for every method "
              "(random resized crop 0.7-1.0 of the area, shifts up to 10%, mirrors for Fashion-MNIST tasks only)."]
    machines = sorted({json.dumps(u["machine"], sort_keys=True) for u in units})
    lines += ["", "Machines that made the units: " + "; ".join(machines)]
    write_results(args.name, {"settings": unit_settings(args), "units": units, "overlaps": OVERLAPS,
                              "rows": [r.to_dict() for r in all_rows], "summary": summary,
                              "seconds_this_run": round(time.perf_counter() - started, 1)}, "\n".join(lines))
    return "\n".join(lines)


def goal_checks(summary: list[dict]) -> list[str]:
    """The issue's two goals, checked on the finished units (test numbers of methods chosen on validation)."""
    def mean_of(method, shots, task=None):
        values = [s["test_mean"] for s in summary if s["method"] == method and s["shots"] == shots
                  and (task is None or s["task"] == task)]
        return statistics.fmean(values) if values else float("nan")

    lines = ["Goals (test accuracy; every choice made on validation):", "",
             "| shots | best_zoo (avg over tasks) | scratch | linear_probe | best_zoo ahead of both? |",
             "|---:|---:|---:|---:|---|"]
    tasks = {s["task"] for s in summary}
    for shots in sorted({s["shots"] for s in summary}):
        if {s["task"] for s in summary if s["shots"] == shots} != tasks:
            lines.append(f"| {shots} | - | - | - | not every task has finished units |")
            continue
        zoo, scratch, probe = (mean_of(m, shots) for m in ("best_zoo", "scratch", "linear_probe"))
        lines.append(f"| {shots} | {zoo:.4f} | {scratch:.4f} | {probe:.4f} | "
                     f"{'yes' if zoo > max(scratch, probe) else 'no'} |")
    lines += ["", "| task | shots | auto | better of scratch / linear_probe | auto - better |", "|---|---:|---:|---:|---:|"]
    for task in sorted({s["task"] for s in summary}):
        for shots in sorted({s["shots"] for s in summary if s["task"] == task}):
            auto = mean_of("auto", shots, task)
            better = max(mean_of("scratch", shots, task), mean_of("linear_probe", shots, task))
            lines.append(f"| {task} | {shots} | {auto:.4f} | {better:.4f} | {auto - better:+.4f} |")
    return lines


def selection_diagnostics(rows: list[MethodRow]) -> list[str]:
    """How much choosing on a few validation images costs: chosen vs best-on-test candidate, and ties.

    Reported only (the best-on-test candidate is hindsight, never a method)."""
    lines = ["Selection on validation, diagnosed (hindsight = the candidate with the best test accuracy):", "",
             "| row | shots | units | chosen test | hindsight test | chose the hindsight best | units with a val-accuracy tie at the top |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    by_unit: dict[tuple, list[MethodRow]] = {}
    for row in rows:
        by_unit.setdefault((row.task, row.shots, row.seed), []).append(row)
    for label, among in (("auto", auto_candidates()), ("best_zoo", zoo_methods())):
        for shots in sorted({k[1] for k in by_unit}):
            chosen, hindsight, hits, ties, n = [], [], 0, 0, 0
            for (task, k, seed), members in by_unit.items():
                picked = next((r for r in members if r.method == label), None)
                pool = [r for r in members if r.method in among]
                if k != shots or picked is None or not pool:
                    continue
                n += 1
                best = max(r.test for r in pool)
                chosen.append(picked.test)
                hindsight.append(best)
                hits += picked.test == best
                top = max(r.val for r in pool)
                ties += sum(abs(r.val - top) <= 1e-9 for r in pool) > 1
            if n:
                lines.append(f"| {label} | {shots} | {n} | {statistics.fmean(chosen):.4f} | "
                             f"{statistics.fmean(hindsight):.4f} | {hits} of {n} | {ties} of {n} |")
    return lines


def gate_fit_table(rows: list[MethodRow], zoo_names: list[str] | None) -> list[str]:
    """What the gate fits found: held-out objective before and after, where the weight went, the scales."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        fit = (row.info or {}).get("gate_fit")
        if fit and row.method not in DERIVED:
            groups.setdefault((row.task, row.shots, row.method), []).append(fit)
    if not groups:
        return []
    lines = ["Gate fits (means over seeds; objective = ridge leave-one-out loss on the training images + penalty):", "",
             f"| task | shots | method | objective start -> fitted | LOO acc | mean gate per zoo module "
             f"({', '.join(zoo_names or [])}) | mean site scale |",
             "|---|---:|---|---:|---:|---|---:|"]
    for (task, shots, method), fits in sorted(groups.items()):
        gates = [statistics.fmean(f["mean_gates"][i] for f in fits) for i in range(len(fits[0]["mean_gates"]))]
        scale = statistics.fmean(statistics.fmean(f["site_scales"]) for f in fits)
        lines.append(f"| {task} | {shots} | {method} | {statistics.fmean(f['start_objective'] for f in fits):.3f} -> "
                     f"{statistics.fmean(f['objective'] for f in fits):.3f} | "
                     f"{statistics.fmean(f['loo_accuracy'] for f in fits):.3f} | "
                     f"{', '.join(f'{g:.2f}' for g in gates)} | {scale:.2f} |")
    return lines


def plot_shots(summary: list[dict], name: str) -> None:
    """One accuracy-against-shots PNG per task next to the table: ``results/<name>-<task>.png``."""
    from vimw.report.plots import accuracy_vs_shots

    for task in sorted({s["task"] for s in summary}):
        accuracy_vs_shots(summary, task, RESULTS / f"{name}-{slug(task)}.png")


def collect(args) -> tuple[list[MethodRow], list[dict]]:
    rows, units = [], []
    settings = unit_settings(args)
    for shots in args.shots:
        for task in args.tasks:
            for seed in args.seeds:
                path = unit_path(args.name, task, shots, seed)
                found = load_unit(path, settings)
                if found is not None:
                    payload = json.loads(path.read_text())
                    rows += found
                    units.append({"task": task, "shots": shots, "seed": seed, "file": path.name,
                                  "seconds": payload["seconds"], "machine": payload["machine"],
                                  "zoo": payload.get("zoo")})
    return rows, units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", default="runs/zoo-default")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="task names or folder:DIR / npz:FILE")
    parser.add_argument("--shots", nargs="+", type=int, default=list(SHOTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list_methods())
    parser.add_argument("--max-test", type=int, default=2000, help="test images per task (stratified, fixed)")
    parser.add_argument("--target-steps", type=int, default=120, help="optimiser steps per training run")
    parser.add_argument("--no-augment", action="store_true", help="train every method without augmentation")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the units (one per core)")
    parser.add_argument("--worker", type=int, default=0, help="this process's index, 0 .. workers-1")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cv", type=int, default=0, metavar="K",
                        help="choose auto and best_zoo by K-fold cross-validation (default name downstream-cvK)")
    parser.add_argument("--name", default=None, help="summary file stem (default: downstream)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the summary from the unit files")
    args = parser.parse_args()
    if args.cv == 1 or args.cv < 0:
        parser.error("--cv needs at least 2 folds")
    args.name = args.name or (f"downstream-cv{args.cv}" if args.cv else "downstream")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if not args.report_only:
        zoo = ensure_zoo(args.zoo, device=args.device)
        backbone = create_backbone(DEFAULT_BACKBONE, image_size=DEFAULT_IMAGE_SIZE).to(args.device)
        # 5 and 10 shots first (what the zoo is for), every task, then seeds; 20 shots last.
        order = [(t, k, s) for k in args.shots for s in args.seeds for t in args.tasks]
        for number, (task, shots, seed) in enumerate(order):
            if number % args.workers != args.worker:
                continue
            if load_unit(unit_path(args.name, task, shots, seed), unit_settings(args)) is not None:
                print(f"{task} k={shots} s={seed}: done earlier, kept", flush=True)
                continue
            print(f"{task} k={shots} s={seed}: running", flush=True)
            run_unit(args, backbone, zoo, task, shots, seed)
            rows, units = collect(args)
            report(args, rows, units, started)
    rows, units = collect(args)
    print(report(args, rows, units, started))
    if rows:
        plot_shots(summarise_rows(rows), args.name)


if __name__ == "__main__":
    main()

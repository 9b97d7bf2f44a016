"""Development diagnosis on the development tasks, current recipe: does averaging a new module
with the zoo's closed-form head add more than averaging two new modules?

The lead from ``ensembles.py`` (older recipe, the evaluation tasks' development seeds) measured
again where defaults are chosen: ``fmnist-apparel`` and ``photos`` (the protocol's development
tasks), development seeds 100+, true few-shot (the k shots only), each method at its grid's
first setting (the protocol's 1-shot setting, used at every shot count here: no cross-validation,
so the comparison costs two trained runs per unit), on the leave-overlap-out zoo, the fixed test
set. Per unit:

- ``scratch``, ``scratch@2`` (training seed + 1000, same split), ``ridge_probe``, ``zoo_ridge`` (x2);
- ``scratch_x2``: ``scratch`` and ``scratch@2`` averaged (two trained models);
- ``scratch+zoo_ridge`` and ``scratch+ridge_probe``: ``scratch`` averaged with a closed-form head
  (one trained model; the second is the control for the zoo's share);
- ``scratch*zoo_ridge`` and ``scratch*ridge_probe``: the same pairs combined by averaging
  log-probabilities (a product of experts), which a sharp model does not dominate the way it
  dominates an average of probabilities.

One JSON file per (task, shots, seed) under ``results/dev/ensembles-devtasks-units``; resumes.
A lead for a new protocol file, never a reported result.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dev/ensembles_devtasks.py --seeds 10 --shots 1 2
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_common import DEV_SEEDS, RESULTS_DEV, paired_summary  # noqa: E402
from downstream_unseen import final_test_logits, test_metrics  # noqa: E402

UNITS = RESULTS_DEV / "ensembles-devtasks-units"
TASKS = ("fmnist-apparel", "photos")
METRIC = "balanced_accuracy"
SECOND_SEED = 1000
VARIANTS = ("scratch", "scratch_x2", "ridge_probe", "zoo_ridge", "scratch+ridge_probe", "scratch+zoo_ridge",
            "scratch*ridge_probe", "scratch*zoo_ridge")


def run_unit(task: str, shots: int, seed: int, backbone, zoo) -> dict:
    from vimw.data import load_task
    from vimw.workflows.compare import MethodCV, SearchSettings, few_shot_context, train_chosen
    from vimw.zoo.overlap import leave_overlap_out

    data = load_task(task, shots=shots, seed=seed, max_test=1000)
    names = leave_overlap_out(zoo, task)
    context, _ = few_shot_context(backbone, data, zoo, names, seed)
    settings = SearchSettings(seed=seed)
    probs = {}
    for method, run_settings, label in (("scratch", settings, "scratch"),
                                        ("scratch", settings.replace(seed=seed + SECOND_SEED), "scratch@2"),
                                        ("ridge_probe", settings, "ridge_probe"), ("zoo_ridge", settings, "zoo_ridge")):
        fixed = MethodCV(method, dict(settings.grid(method)[0]), "fixed (the grid's first setting)")
        _, result = train_chosen(context, fixed, run_settings)
        probs[label] = final_test_logits(result, method, task, names, zoo, data.test).double().softmax(1)
    probs["scratch_x2"] = (probs["scratch"] + probs.pop("scratch@2")) / 2
    probs["scratch+ridge_probe"] = (probs["scratch"] + probs["ridge_probe"]) / 2
    probs["scratch+zoo_ridge"] = (probs["scratch"] + probs["zoo_ridge"]) / 2
    for head in ("ridge_probe", "zoo_ridge"):
        probs[f"scratch*{head}"] = ((probs["scratch"].clamp_min(1e-12).log() + probs[head].clamp_min(1e-12).log()) / 2
                                    ).softmax(1)
    return {"task": task, "shots": shots, "seed": seed, "zoo": names,
            "test": {v: test_metrics(probs[v].clamp_min(1e-12).log(), data.test.targets)[METRIC] for v in VARIANTS}}


def report(units: list[dict]) -> str:
    cells = defaultdict(list)
    for u in units:
        cells[(u["task"], u["shots"])].append(u)
        cells[("both tasks", u["shots"])].append(u)
    pairs = (("scratch_x2", "scratch"), ("scratch+zoo_ridge", "scratch_x2"), ("scratch+zoo_ridge", "scratch+ridge_probe"),
             ("scratch*zoo_ridge", "scratch_x2"), ("scratch*zoo_ridge", "scratch*ridge_probe"),
             ("zoo_ridge", "ridge_probe"))
    lines = ["# Averaging a new module with the zoo's closed-form head, development tasks (not a result)", "",
             f"{METRIC}, paired per seed, points, 95% t interval, seeds ahead/behind.", "",
             "| task | shots | n | " + " | ".join(f"{a} - {b}" for a, b in pairs) + " |",
             "|---|---|---|" + "---|" * len(pairs)]
    for (task, shots), us in sorted(cells.items(), key=lambda kv: (kv[0][0] == "both tasks", kv[0])):
        row = []
        for a, b in pairs:
            d = paired_summary([u["test"][a] for u in us], [u["test"][b] for u in us])
            row.append(f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] {d['wins']}/{d['losses']}")
        lines.append(f"| {task} | {shots} | {len(us)} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", default="runs/zoo")
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seeds", type=int, default=10, help="development seeds 100, 101, ...")
    parser.add_argument("--report", action="store_true", help="only the report, from the units that exist")
    args = parser.parse_args()
    torch.set_num_threads(1)
    UNITS.mkdir(parents=True, exist_ok=True)
    if not args.report:
        from vimw.backbones import create_backbone
        from vimw.zoo import Zoo

        backbone, zoo = create_backbone("efficientnet_lite0", image_size=64).eval(), Zoo(args.zoo)
        for seed in DEV_SEEDS[: args.seeds]:
            for task in TASKS:
                for shots in args.shots:
                    path = UNITS / f"{task}__{shots}__s{seed}.json"
                    if not path.exists():
                        unit = run_unit(task, shots, seed, backbone, zoo)
                        path.write_text(json.dumps(unit) + "\n")
                        print(path.name, {k: round(v, 3) for k, v in unit["test"].items()}, flush=True)
    units = [json.loads(p.read_text()) for p in sorted(UNITS.glob("*.json"))]
    text = report(units)
    (RESULTS_DEV / "ensembles-devtasks.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

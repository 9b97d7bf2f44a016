"""Development diagnosis on the development tasks, current recipe: does a new module trained on top
of the frozen, amplified zoo beat a new module trained on the backbone alone?

Both protocols found the zoo helping a closed-form head (``zoo_ridge`` over ``ridge_probe``) while
a trained new module (``scratch``) beats every closed-form head. If the two gains add up, a new
module trained *on top of* the zoo (``zoo_residual``: ``zoo_ridge``'s frozen uniform ensemble x2
plus a new module of the zoo's kind at every site, summed, trained with the head like ``scratch``)
would beat ``scratch``. It was measured once before, only at lr 1e-2 where ``scratch`` itself
collapsed on digits (``NOTES.md`` section 7); here it runs with the registered recipe.

``fmnist-apparel`` and ``photos`` (the protocols' development tasks), development seeds 100+,
true few-shot (the k shots only), every trained method at its grid's first setting (lr 1e-3; the
protocols' 1-shot setting, used at every shot count: no cross-validation), the leave-overlap-out
zoo, the fixed test set. ``zoo_residual`` sees the same batches and views as ``scratch``; as these
runs built it (registered here as ``zoo_residual_dev``), loading the zoo's modules after the seed
drew numbers, so its new module and head start from other draws than ``scratch``'s (like another
training seed; the library's ``zoo_residual`` draws them exactly as ``scratch`` does). One JSON file per (task, shots, seed) under ``results/dev/zoo-residual-devtasks-units``;
resumes. A lead for a new protocol file, never a reported result.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dev/zoo_residual_devtasks.py --seeds 10 --shots 1 2 5 [--scale 1]
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_common import DEV_SEEDS, RESULTS_DEV, paired_summary  # noqa: E402
from downstream_unseen import final_test_logits, test_metrics  # noqa: E402

UNITS = RESULTS_DEV / "zoo-residual-devtasks-units"
TASKS = ("fmnist-apparel", "photos")
METRIC = "balanced_accuracy"
METHODS = ("scratch", "zoo_residual", "ridge_probe", "zoo_ridge")
DEV_NAMES = {"zoo_residual": "zoo_residual_dev"}  # the registered name of a method built here


def register_zoo_residual(scale: float) -> None:
    """``zoo_residual_dev`` (the zoo amplified ``scale`` times) as these runs built it, for this process only."""
    from vimw.aggregation.gatefit import ScaledZooAggregate
    from vimw.aggregation.residual import ZooResidual
    from vimw.methods import DownstreamMethod, MethodContext, register_method
    from vimw.modules import ModuleSet, config_from_dict
    from vimw.training import TaskModel, TrainConfig

    @register_method(DEV_NAMES["zoo_residual"], "zoo_ridge's frozen zoo plus a new module, trained like scratch",
                     uses_zoo=True, trains="zoo")
    class ZooResidualMethod(DownstreamMethod):
        def build(self, ctx: MethodContext, config: TrainConfig) -> tuple[TaskModel, dict]:
            names, experts = ctx.experts(self.name)
            # Loading the zoo's modules above drew numbers after the seed: the module's draws differ from scratch's.
            module = ModuleSet.create(config_from_dict(dict(ctx.zoo.manifest(names[0]).module)), ctx.backbone.sites)
            with torch.random.fork_rng():
                zoo = ScaledZooAggregate(experts, names, ctx.backbone, mode="ens")
            zoo.gate_logits.requires_grad_(False)
            with torch.no_grad():
                zoo.log_scale.fill_(math.log(scale))
            return TaskModel(ctx.backbone, ctx.head(), plugin=ZooResidual(zoo, module)), {}


def run_unit(task: str, shots: int, seed: int, backbone, zoo) -> dict:
    from vimw.data import load_task
    from vimw.workflows.compare import MethodCV, SearchSettings, few_shot_context, train_chosen
    from vimw.zoo.overlap import leave_overlap_out

    data = load_task(task, shots=shots, seed=seed, max_test=1000)
    names = leave_overlap_out(zoo, task)
    context, _ = few_shot_context(backbone, data, zoo, names, seed)
    settings = SearchSettings(seed=seed)
    test, seconds = {}, {}
    for method in METHODS:
        fixed = MethodCV(DEV_NAMES.get(method, method), dict(settings.grid(method)[0]),
                         "fixed (the grid's first setting)")
        started = time.perf_counter()
        _, result = train_chosen(context, fixed, settings)
        seconds[method] = time.perf_counter() - started
        logits = final_test_logits(result, method, task, names, zoo, data.test)
        test[method] = test_metrics(logits, data.test.targets)[METRIC]
    return {"task": task, "shots": shots, "seed": seed, "zoo": names, "test": test, "seconds": seconds}


def report(units: list[dict], scale: float) -> str:
    cells = defaultdict(list)
    for u in units:
        cells[(u["task"], u["shots"])].append(u)
        cells[("both tasks", u["shots"])].append(u)
    pairs = (("zoo_residual", "scratch"), ("zoo_ridge", "ridge_probe"), ("scratch", "ridge_probe"),
             ("zoo_residual", "zoo_ridge"))
    lines = [f"# A new module on top of the frozen zoo x{scale:g}, development tasks (not a result)", "",
             "Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dev/zoo_residual_devtasks.py --seeds 10 "
             f"--shots 1 2 5 --scale {scale:g}`", "",
             f"{METRIC}, paired per seed, points, 95% t interval, seeds ahead/behind; every trained method at lr "
             "1e-3, 120 steps, the k shots only.", "",
             "| task | shots | n | " + " | ".join(f"{a} - {b}" for a, b in pairs) + " | seconds, zoo_residual / scratch |",
             "|---|---|---|" + "---|" * (len(pairs) + 1)]
    for (task, shots), us in sorted(cells.items(), key=lambda kv: (kv[0][0] == "both tasks", kv[0])):
        row = []
        for a, b in pairs:
            d = paired_summary([u["test"][a] for u in us], [u["test"][b] for u in us])
            row.append(f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] {d['wins']}/{d['losses']}")
        ratio = sum(u["seconds"]["zoo_residual"] for u in us) / sum(u["seconds"]["scratch"] for u in us)
        lines.append(f"| {task} | {shots} | {len(us)} | " + " | ".join(row) + f" | {ratio:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", default="runs/zoo")
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 2, 5])
    parser.add_argument("--seeds", type=int, default=5, help="development seeds 100, 101, ...")
    parser.add_argument("--skip", type=int, default=0, help="start at the seed this many after 100 (a second process)")
    parser.add_argument("--scale", type=float, default=2.0,
                        help="the frozen zoo's amplification (2: zoo_ridge's); another value has units and a "
                             "report of its own")
    parser.add_argument("--report", action="store_true", help="only the report, from the units that exist")
    args = parser.parse_args()
    torch.set_num_threads(1)
    suffix = "" if args.scale == 2.0 else f"-x{args.scale:g}"
    units_dir = UNITS.with_name(UNITS.name.replace("-units", f"{suffix}-units"))
    units_dir.mkdir(parents=True, exist_ok=True)
    if not args.report:
        from vimw.backbones import create_backbone
        from vimw.zoo import Zoo

        register_zoo_residual(args.scale)
        backbone, zoo = create_backbone("efficientnet_lite0", image_size=64).eval(), Zoo(args.zoo)
        for seed in DEV_SEEDS[args.skip: args.seeds]:
            for shots in args.shots:
                for task in TASKS:
                    path = units_dir / f"{task}__{shots}__s{seed}.json"
                    if not path.exists():
                        unit = run_unit(task, shots, seed, backbone, zoo)
                        path.write_text(json.dumps(unit) + "\n")
                        print(path.name, {k: round(v, 3) for k, v in unit["test"].items()},
                              {k: round(v) for k, v in unit["seconds"].items()}, flush=True)
    units = [json.loads(p.read_text()) for p in sorted(units_dir.glob("*.json"))]
    text = report(units, args.scale)
    (RESULTS_DEV / f"zoo-residual-devtasks{suffix}.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

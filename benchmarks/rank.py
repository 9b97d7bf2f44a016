"""Does `vimw zoo rank` know which modules help before training? LogME against each module's `single` accuracy.

    python benchmarks/rank.py [--zoo runs/zoo-bench] [--tasks fmnist fmnist-footwear-bags digits8x8]
                              [--shots 10] [--seeds 0] [--max-test 1000]

For each task x shots x seed (the downstream benchmark's splits):
- the rank score: LogME of the labelled images (train + validation, never test) embedded
  by the backbone with each module plugged in (`vimw.workflows.rank.rank_modules`);
- each module's `single` result: the module alone with a new head trained on the shots
  (the downstream benchmark's settings for `single`: learning rate 3e-3, about 120 steps,
  augmented views), its validation and test accuracy.
Reported per task: Spearman's rho between the rank score and the test accuracy over the
zoo's modules, the same for the validation accuracy (what training every module and
looking at validation gives, for comparison), whether the top-ranked module is the best
on test, and the seconds each way costs. Test accuracy is only measured, never used to
choose anything.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import sweep_parser, write_results  # noqa: E402

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from vimw.data import load_task  # noqa: E402
from vimw.training import evaluate  # noqa: E402
from vimw.methods import build_model, get_method  # noqa: E402
from vimw.workflows.compare import SearchSettings  # noqa: E402
from vimw.training.headfit import fit_head  # noqa: E402
from vimw.workflows.rank import rank_modules, zoo_backbone  # noqa: E402
from vimw.zoo import Zoo, verify_or_raise  # noqa: E402


def single_scores(backbone, data, zoo, names, seed: int) -> dict[str, dict]:
    config = SearchSettings(seed=seed).base_config(len(data.train)).replace(**get_method("single").grid[0])
    scores = {}
    for index, name in enumerate(names):
        started = time.perf_counter()
        torch.manual_seed(config.seed)
        model, _ = build_model("single", backbone, data, zoo=zoo, names=names, single_index=index)
        fit_head(model, data, config)
        scores[name] = {"val": evaluate(model, data.val)["score"], "test": evaluate(model, data.test)["score"],
                        "seconds": round(time.perf_counter() - started, 2)}
    return scores


def main() -> None:
    parser = sweep_parser(__doc__, zoo="runs/zoo-bench", tasks=["fmnist", "fmnist-footwear-bags", "digits8x8"],
                          shots=[10])
    parser.add_argument("--max-test", type=int, default=1000)
    parser.add_argument("--name", default="rank")
    args = parser.parse_args()
    torch.set_num_threads(1)

    zoo = Zoo(args.zoo)
    verify_or_raise(zoo)
    backbone = zoo_backbone(zoo)
    names = [n for n, e in zoo.list() if e.get("fingerprint") == backbone.fingerprint()]
    units, lines = [], []
    for task in args.tasks:
        for shots in args.shots:
            for seed in args.seeds:
                data = load_task(task, shots=shots, seed=seed, max_test=args.max_test)
                started = time.perf_counter()
                ranked = rank_modules(zoo, data, backbone=backbone, names=names)
                rank_seconds = time.perf_counter() - started
                started = time.perf_counter()
                single = single_scores(backbone, data, zoo, names, seed)
                single_seconds = time.perf_counter() - started
                logme = {r["module"]: r["score"] for r in ranked if not r.get("reference")}
                test = [single[n]["test"] for n in names]
                rho_test = spearmanr([logme[n] for n in names], test).statistic
                rho_val = spearmanr([single[n]["val"] for n in names], test).statistic
                top = max(names, key=lambda n: logme[n])
                best = max(test)
                unit = {"task": task, "shots": shots, "seed": seed, "spearman_logme_test": rho_test,
                        "spearman_val_test": rho_val, "top_ranked": top, "top_ranked_test": single[top]["test"],
                        "best_test": best, "best_module": names[test.index(best)],
                        "backbone_alone_logme": next(r["score"] for r in ranked if r.get("reference")),
                        "rank_seconds": round(rank_seconds, 1), "single_seconds": round(single_seconds, 1),
                        "modules": {n: {"logme": logme[n], **single[n]} for n in names}}
                units.append(unit)
                print(f"{task} k={shots} s={seed}: rho(LogME, test) {rho_test:.3f}, rho(val, test) {rho_val:.3f}, "
                      f"top {top} ({single[top]['test']:.4f}) vs best {unit['best_module']} ({best:.4f}); "
                      f"{rank_seconds:.0f} s vs {single_seconds:.0f} s", flush=True)
                lines.append(f"| {task} | {shots} | {seed} | {rho_test:.3f} | {rho_val:.3f} | {top} ({single[top]['test']:.4f}) | "
                             f"{unit['best_module']} ({best:.4f}) | {rank_seconds:.0f} | {single_seconds:.0f} |")
    mean_rho = statistics.fmean(u["spearman_logme_test"] for u in units)
    mean_val = statistics.fmean(u["spearman_val_test"] for u in units)
    header = (f"Zoo: {args.zoo} ({len(names)} modules). Spearman's rho over the modules, per task, between the "
              "rank score (LogME on train + val features, no training) and each module's `single` test accuracy; "
              "for comparison, between `single`'s validation accuracy (a head trained per module) and its test "
              "accuracy.\n\n"
              "| task | shots | seed | rho(LogME, test) | rho(val acc, test) | top-ranked (its test) | best on test | "
              "rank s | single s |\n|---|---:|---:|---:|---:|---|---|---:|---:|")
    per_module = ["", "| task | module | LogME | single val | single test |", "|---|---|---:|---:|---:|"]
    for unit in units:
        for name, m in sorted(unit["modules"].items(), key=lambda kv: -kv[1]["logme"]):
            per_module.append(f"| {unit['task']} k={unit['shots']} | {name} | {m['logme']:.4f} | {m['val']:.4f} | "
                              f"{m['test']:.4f} |")
        per_module.append(f"| {unit['task']} k={unit['shots']} | (backbone alone) | "
                          f"{unit['backbone_alone_logme']:.4f} | | |")
    markdown = "\n".join([header, *lines, "",
                          f"Mean rho(LogME, test) {mean_rho:.3f}; mean rho(val acc, test) {mean_val:.3f}.",
                          *per_module])
    print(markdown)
    write_results(args.name, {"settings": vars(args), "zoo": names, "mean_spearman_logme_test": mean_rho,
                              "mean_spearman_val_test": mean_val, "units": units}, markdown)


if __name__ == "__main__":
    main()

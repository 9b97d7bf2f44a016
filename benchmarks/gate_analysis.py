"""Why `ens` does or does not beat its baselines: what the gates learn, against what each module alone gives.

    python benchmarks/gate_analysis.py [--zoo runs/demo/zoo] [--tasks ...] [--shots 5] [--seeds 0]

For each task x shots x seed (the benchmark's splits), with the head's learning rate fixed:
- every zoo module alone (`single` with that module forced), head trained on the k shots:
  its validation and test accuracy, i.e. how much each piece of midstream knowledge helps;
- `uniform` (gates fixed equal) and `ens` at several gate learning rates: validation and
  test accuracy and what the gates became (mean largest gate over sites, mean entropy as a
  fraction of log N, mean weight per module).
If the gates knew which module helps, `ens` would put its weight where the best single
module is. Test numbers are reported, never used to choose anything.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ensure_zoo, sweep_parser, write_results  # noqa: E402

import torch  # noqa: E402

from vimw.aggregation.gates import gate_entropy  # noqa: E402
from vimw.methods import build_model  # noqa: E402
from vimw.backbones import create_backbone  # noqa: E402
from vimw.data import load_task  # noqa: E402
from vimw.workflows.compare import SearchSettings  # noqa: E402
from vimw.training import evaluate, fit  # noqa: E402
from vimw.workflows.midstream import DEFAULT_BACKBONE, DEFAULT_IMAGE_SIZE  # noqa: E402


def gate_summary(gates: torch.Tensor, names: list[str]) -> dict:
    """Plain numbers for a (sites x modules) gate matrix."""
    n = gates.shape[-1]
    return {
        "max_gate_mean": round(gates.max(-1).values.mean().item(), 4),
        "entropy_fraction": round((gate_entropy(gates) / math.log(n)).mean().item(), 4),
        "module_weight": {name: round(w, 4) for name, w in zip(names, gates.mean(0).tolist())},
    }


def run_one(method, backbone, data, config, zoo, names, single_index=None):
    torch.manual_seed(config.seed)
    model, _ = build_model(method, backbone, data, zoo=zoo, names=names, single_index=single_index)
    result = fit(model, data, config, progress=False)
    val = evaluate(model, data.val, config.eval_batch_size)["score"]
    test = evaluate(model, data.test, config.eval_batch_size)["score"]
    # The kept weights are the best validation epoch's: how early that was, and how far the
    # training loss had fallen by then and by the end, say whether the gates still had a signal.
    losses = [h["train_loss"] for h in result.history]
    fitting = {"best_epoch": f"{result.best_epoch}/{len(losses)}",
               "train_loss_best": round(losses[result.best_epoch - 1], 4), "train_loss_last": round(losses[-1], 4)}
    return model, round(val, 4), round(test, 4), fitting


def main() -> None:
    parser = sweep_parser(__doc__, zoo="runs/demo/zoo", tasks=["fmnist-footwear-bags", "fmnist", "digits8x8"],
                          shots=[5])
    parser.add_argument("--lr", type=float, default=3e-2, help="head learning rate (fixed)")
    parser.add_argument("--gate-lrs", nargs="+", type=float, default=[0.05, 0.5, 2.0])
    parser.add_argument("--max-test", type=int, default=2000)
    parser.add_argument("--name", default="gate_analysis")
    args = parser.parse_args()

    zoo = ensure_zoo(args.zoo)
    backbone = create_backbone(DEFAULT_BACKBONE, image_size=DEFAULT_IMAGE_SIZE)
    names = [name for name, _ in zoo.list()]
    rows, lines, started = [], [], time.perf_counter()
    header = ("| task | shots | seed | method | val | test | best epoch | train loss (best / last) | largest gate | "
              "entropy / log N | mean weight per module |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")

    def emit(row):
        rows.append(row)
        weights = ", ".join(f"{k} {v:.2f}" for k, v in row.get("module_weight", {}).items())
        lines.append(f"| {row['task']} | {row['shots']} | {row['seed']} | {row['method']} | {row['val']:.4f} | "
                     f"{row['test']:.4f} | {row['best_epoch']} | {row['train_loss_best']:.4f} / {row['train_loss_last']:.4f} | "
                     f"{row.get('max_gate_mean', '-')} | {row.get('entropy_fraction', '-')} | "
                     f"{weights or '-'} |")
        print(lines[-1], flush=True)
        write_results(args.name, {"settings": vars(args), "zoo": names, "rows": rows,
                                  "seconds": round(time.perf_counter() - started, 1)},
                      header + "\n" + "\n".join(lines))

    for task in args.tasks:
        for shots in args.shots:
            for seed in args.seeds:
                data = load_task(task, shots=shots, seed=seed, max_test=args.max_test)
                config = SearchSettings(seed=seed, augment=False).base_config(len(data.train)).replace(lr=args.lr)
                key = {"task": task, "shots": shots, "seed": seed}
                for index, name in enumerate(names):
                    _, val, test, fitting = run_one("single", backbone, data, config, zoo, names, single_index=index)
                    emit({**key, "method": f"single:{name}", "val": val, "test": test, **fitting})
                _, val, test, fitting = run_one("uniform", backbone, data, config, zoo, names)
                emit({**key, "method": "uniform", "val": val, "test": test, **fitting})
                for gate_lr in args.gate_lrs:
                    model, val, test, fitting = run_one(
                        "ens", backbone, data, config.replace(gate_lr=gate_lr), zoo, names)
                    gates = model.plugin.gates().detach().cpu()
                    emit({**key, "method": f"ens gate_lr={gate_lr:g}", "val": val, "test": test, **fitting,
                          **gate_summary(gates, names)})


if __name__ == "__main__":
    main()

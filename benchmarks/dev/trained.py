"""Development diagnosis (issue 23, item 5): trained methods vs ``scratch`` and vs a ``scratch`` ensemble.

For each (task, shots, development seed) the shots and a validation set of
``max(shots, 2)`` images per class are drawn from the task's fixed pool
(``dev_common.fixed_pool``); every method trains with the same recipe (``RECIPE``, then
``auto``'s) and is scored on the same fixed test set. Each run's
test probabilities are kept, so ensembles (``scratch`` with two training seeds, ``scratch``
+ ``zoo_init``) are formed afterwards without training again.

``scratch@1`` is ``scratch`` with another training seed on the same split (the control
for any method that combines two trained models). One unit = one (task, shots, seed,
method) JSON file under ``results/dev/trained-units``: the script resumes where it stopped.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/dev/trained.py --zoo runs/zoo --seeds 5
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dev_common import (  # noqa: E402
    DEV_SEEDS, RESULTS_DEV, ROOT, dev_parser, fixed_pool, leave_overlap_out, sample_shots_from, test_digest,
)

UNITS = RESULTS_DEV / "trained-units"
PROBS = ROOT / "runs" / "dev" / "probs"
TRAINING_SEED_OFFSET = 1000
# The recipe measured: `auto`'s training settings when these runs were made (code at 5c317e8);
# --lr / --epochs override it.
RECIPE = {"epochs": 30, "lr": 1e-2, "batch_size": 32, "gate_lr": 0.05, "augment": True}  # "method@r" trains with seed + r * offset on the same split


def split_for(pool, test, task: str, shots: int, seed: int):
    from vimw.data import TaskData, get_task_spec

    train_index, val_index = sample_shots_from(pool.targets, shots, seed, extra=max(shots, 2))
    return TaskData(get_task_spec(task), pool.subset(train_index.numpy(), name=f"{task}/train"),
                    pool.subset(val_index.numpy(), name=f"{task}/val"), test)


def zoo_residual(backbone, data, config, zoo, names):
    """(model, fit result, extra): the exact-LOO fitted zoo aggregate, frozen, plus a new module.

    The new module and the head are drawn from the seed exactly as ``scratch`` draws them,
    and the data order and views are the same, so a paired difference isolates the zoo.
    """
    from vimw.aggregation.gatefit import fit_aggregate_gates
    from vimw.aggregation.residual import ZooResidual
    from vimw.modules import ModuleSet, config_from_dict
    from vimw.training import TaskModel, fit, head_config_for
    from vimw.methods import build_model

    gated, _ = build_model("gates_ridge", backbone, data, zoo=zoo, names=names)
    gatefit = fit_aggregate_gates(gated, data.train.images, data.train.targets, "ridge", seed=config.seed)
    torch.manual_seed(config.seed)
    module = ModuleSet.create(config_from_dict(zoo.manifest(names[0]).module), backbone.sites)
    model = TaskModel(backbone, head_config_for(backbone, data.kind, data.num_classes),
                      plugin=ZooResidual(gated.plugin, module))
    return model, fit(model, data, config, progress=False), {"gate_fit": gatefit.to_dict()}


def closed_form(method: str):
    """A frozen model (``gates_ridge``'s fitted aggregate, or ``uniform`` amplified x4) with a ridge head."""

    def run(backbone, data, config, zoo, names):
        import math

        from vimw.aggregation.closedform import fit_closed_form_head
        from vimw.aggregation.gatefit import fit_aggregate_gates
        from vimw.methods import build_model

        torch.manual_seed(config.seed)
        model, _ = build_model("gates_ridge", backbone, data, zoo=zoo, names=names)
        extra = {}
        if method == "gates_ridge_cf":
            extra["gate_fit"] = fit_aggregate_gates(model, data.train.images, data.train.targets, "ridge",
                                                    seed=config.seed).to_dict()
        else:
            with torch.no_grad():
                model.plugin.log_scale.fill_(math.log(4.0))
        extra["head"] = fit_closed_form_head(model, data.train.images, data.train.targets).to_dict()
        return model, None, extra

    return run


CUSTOM = {"zoo_residual": zoo_residual, "gates_ridge_cf": closed_form("gates_ridge_cf"),
          "zoo_ridge": closed_form("zoo_ridge")}


def run_unit(method: str, backbone, zoo, names, data, seed: int, config) -> dict:
    from vimw.evaluation.evaluate import evaluate, predict_logits
    from vimw.methods import train_downstream

    base, _, replica = method.partition("@")
    train_seed = seed + int(replica or 0) * TRAINING_SEED_OFFSET
    config = config.replace(seed=train_seed)
    started = time.perf_counter()
    extra = {}
    if base in CUSTOM:
        model, fit_result, extra = CUSTOM[base](backbone, data, config, zoo, names)
    else:
        result = train_downstream(base, backbone, data, config, zoo=zoo, names=names)
        model, fit_result = result.model, result.fit
        extra = {k: v for k, v in result.info.items() if k == "gate_fit"}
    val = evaluate(model, data.val, config.eval_batch_size)
    logits = predict_logits(model.eval(), data.test.images, config.eval_batch_size)
    probs = torch.softmax(logits.double(), 1)
    return {"val": val["score"], "val_loss": val.get("loss"),
            "test": float((probs.argmax(1) == data.test.targets).double().mean()),
            "best_epoch": fit_result.best_epoch if fit_result is not None else None, "train_seed": train_seed,
            "seconds": round(time.perf_counter() - started, 1), "probs": probs, **extra}


def main() -> None:
    parser = dev_parser(__doc__, seeds=5)
    parser.add_argument("--methods", nargs="+", default=["scratch", "scratch@1", "zoo_init", "linear_probe"])
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from vimw.backbones import create_backbone
    from vimw.io import save_tensors
    from vimw.training import TrainConfig
    from vimw.zoo import Zoo

    backbone = create_backbone("efficientnet_lite0", image_size=64).eval()
    zoo = Zoo(args.zoo)
    config = TrainConfig(**RECIPE)
    if args.epochs:
        config = config.replace(epochs=args.epochs)
    if args.lr:
        config = config.replace(lr=args.lr)
    tag = ("" if args.epochs is None else f"-e{args.epochs}") + ("" if args.lr is None else f"-lr{args.lr:g}")
    UNITS.mkdir(parents=True, exist_ok=True)
    PROBS.mkdir(parents=True, exist_ok=True)
    for seed in DEV_SEEDS[: args.seeds]:
        for task in args.tasks:
            names = leave_overlap_out(zoo, task)
            pool, test = fixed_pool(task)
            for shots in args.shots:
                data = split_for(pool, test, task, shots, seed)
                for method in args.methods:
                    name = f"{task}-{shots}-{seed}-{method}{tag}"
                    path = UNITS / f"{name}.json"
                    if path.exists():
                        continue
                    record = run_unit(method, backbone, zoo, names, data, seed, config)
                    probs = record.pop("probs")
                    save_tensors(PROBS / f"{name}.safetensors", {"probs": probs.float().contiguous()})
                    record.update(task=task, shots=shots, seed=seed, method=method + tag, zoo=names,
                                  test_digest=float(test_digest(test.images)))
                    path.write_text(json.dumps(record) + "\n")
                    print(f"{name}: test {record['test']:.3f} val {record['val']:.3f} "
                          f"({record['seconds']} s, epoch {record['best_epoch']})", flush=True)


if __name__ == "__main__":
    main()

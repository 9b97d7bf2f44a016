"""Development diagnosis (issue 23, item 5): is the zoo a better *frozen* representation than the backbone?

For each task, the pooled features of a fixed pool of training images and a fixed test set
are computed once under each representation: the plain backbone, each zoo module alone,
the uniform parameter average (``zoo_init`` before training), the uniform output ensemble
(``uniform``) and that ensemble amplified x4 (the largest per-site scale ``gates_ridge``
allows). Then, for many development seeds and 1/2/5/10 shots, two training-free probes
are fitted on the shots and scored on the fixed test set:

- ``proto``: nearest class mean of L2-normalised features (cosine);
- ``ridge``: the ridge classifier with an intercept, its lambda chosen by the exact
  leave-one-out loss (``gatefit.ridge_loo_loss``; fixed at 1 shot).

Paired per seed against the plain backbone: a representation the zoo makes better shows
a positive difference. Also reported: how far each module moves the features
(``||f_m - f_0|| / ||f_0||`` on test images).

Development numbers, not claims: seeds 100+ only; the evaluation's seeds are never used.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/dev/frozen_probe.py --zoo runs/zoo
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import command_line, machine  # noqa: E402

from dev_common import (  # noqa: E402
    DEV_SEEDS, dev_parser, cached_features, RESULTS_DEV, fixed_pool, leave_overlap_out, paired_summary, sample_shots_from,
)

LAMBDAS = (1e-2, 1e-1, 1.0, 10.0)


def representations(zoo, names, backbone):
    """(name, bypass or None) for every representation measured."""
    from vimw.aggregation import ZooAggregate
    from vimw.methods import zoo_average_module

    Amplified = _amplified_class()
    experts = [zoo.load(n, backbone) for n in names]
    reps = [("backbone", None)]
    reps += [(f"module:{n}", e.bypass) for n, e in zip(names, experts)]
    reps.append(("zoo_average", zoo_average_module(experts, backbone).eval().bypass))
    reps.append(("uniform", ZooAggregate(experts, names, backbone, mode="uniform").eval().bypass))
    for factor in AMPLIFICATIONS:
        amplified = Amplified(experts, names, backbone, mode="ens").eval()
        amplified.factor = factor
        reps.append((f"uniform_x{factor}", amplified.bypass))
    return reps


# Amplifications of the uniform ensemble measured (gatefit's per-site scale stops at exp(MAX_LOG_SCALE) = 4).
AMPLIFICATIONS = (2, 4, 8, 16)


def _amplified_class():
    from vimw.aggregation import ZooAggregate

    class Amplified(ZooAggregate):
        factor = 1.0

        def gates(self) -> torch.Tensor:
            return super().gates() * self.factor

    return Amplified


@torch.no_grad()
def features(backbone, images: torch.Tensor, bypass, batch: int = 250) -> torch.Tensor:
    out = []
    for start in range(0, len(images), batch):
        pixels = backbone.preprocess(images[start:start + batch])
        out.append(backbone.forward_features(pixels, bypass))
    return torch.cat(out).double()


# -- the probes ------------------------------------------------------------------------------------
def proto_predict(train_f, train_y, test_f, classes):
    unit = torch.nn.functional.normalize
    means = torch.stack([unit(train_f[train_y == c], dim=1).mean(0) for c in range(classes)])
    return (unit(test_f, dim=1) @ unit(means, dim=1).T).argmax(1)


def ridge_predict(train_f, train_y, test_f, classes):
    from vimw.aggregation.gatefit import ridge_loo_loss

    lam = 1.0 if len(train_f) < 3 or len(train_f) <= classes else ridge_loo_loss(train_f, train_y, classes, LAMBDAS)[1]
    mean = train_f.mean(0, keepdim=True)
    fc = train_f - mean
    y = torch.nn.functional.one_hot(train_y, classes).double()
    gram = fc @ fc.T
    alpha = lam * gram.diagonal().mean().clamp_min(1e-12)
    dual = torch.linalg.solve(gram + alpha * torch.eye(len(fc), dtype=fc.dtype), y - y.mean(0))
    return ((test_f - mean) @ fc.T @ dual).argmax(1)


PROBES = {"proto": proto_predict, "ridge": ridge_predict}


def loo_selected(feats: dict, pool, test, shots: int, seeds: list[int], name: str = "loo_select") -> dict:
    """``{name: [accuracy per seed], name + "_choices": [...]}``: per seed, the representation
    of ``feats`` with the lowest exact leave-one-out ridge loss on the shots, scored by ``ridge``."""
    from vimw.aggregation.gatefit import ridge_loo_loss

    accuracies, choices = [], []
    for seed in seeds:
        index = sample_shots_from(pool.targets, shots, seed)
        y = pool.targets[index]
        losses = {rep: float(ridge_loo_loss(f[0][index], y, pool.num_classes, LAMBDAS)[0]) for rep, f in feats.items()}
        best = min(losses, key=losses.get)
        predicted = ridge_predict(feats[best][0][index], y, feats[best][1], pool.num_classes)
        accuracies.append(float((predicted == test.targets).double().mean()))
        choices.append(best)
    return {name: accuracies, f"{name}_choices": choices}


def main() -> None:
    parser = dev_parser(__doc__, seeds=40)
    parser.add_argument("--out", default="frozen_probe")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from vimw.backbones import create_backbone
    from vimw.zoo import Zoo

    backbone = create_backbone("efficientnet_lite0", image_size=64).eval()
    zoo = Zoo(args.zoo)
    seeds = DEV_SEEDS[: args.seeds]
    payload = {"command": command_line(), "machine": machine(), "seeds": seeds, "shots": args.shots, "tasks": {}}
    lines = ["# Frozen representations vs the plain backbone (development seeds; training-free probes)", ""]
    for task in args.tasks:
        started = time.perf_counter()
        names = leave_overlap_out(zoo, task)
        pool, test = fixed_pool(task)
        reps = representations(zoo, names, backbone)
        feats = {}
        for rep, bypass in reps:
            feats[rep] = tuple(cached_features(task, rep, split, images, lambda: features(backbone, images, bypass))
                               for split, images in (("pool", pool.images), ("test", test.images)))
        base_test = feats["backbone"][1]
        shift = {rep: float(((f[1] - base_test).norm(dim=1) / base_test.norm(dim=1)).mean()) for rep, f in feats.items()}
        classes = pool.num_classes
        scores: dict = {}
        for probe, predict in PROBES.items():
            for shots in args.shots:
                for rep, (pool_f, test_f) in feats.items():
                    row = []
                    for seed in seeds:
                        index = sample_shots_from(pool.targets, shots, seed)
                        predicted = predict(pool_f[index], pool.targets[index], test_f, classes)
                        row.append(float((predicted == test.targets).double().mean()))
                    scores.setdefault(probe, {}).setdefault(str(shots), {})[rep] = row
        # A representation chosen per seed by the exact leave-one-out ridge loss on the shots alone.
        scaled = {rep: f for rep, f in feats.items() if rep == "uniform" or rep.startswith("uniform_x")}
        for k in args.shots:
            scores["ridge"][str(k)].update(loo_selected(feats, pool, test, k, seeds))
            scores["ridge"][str(k)].update(loo_selected(scaled, pool, test, k, seeds, "loo_scale"))
        for row in ("loo_select", "loo_scale"):  # rows in the table; their scores are loo_selected's
            feats[row] = feats["backbone"]
            shift[row] = float("nan")
        payload["tasks"][task] = {"zoo": names, "pool": len(pool), "test": len(test), "feature_shift": shift,
                                  "scores": scores, "seconds": round(time.perf_counter() - started, 1)}
        lines += [f"## {task} (zoo: {len(names)} modules; pool {len(pool)}, fixed test {len(test)})", ""]
        for probe in PROBES:
            lines += [f"### probe `{probe}`: test accuracy, and the paired difference vs the backbone (points, 95% t interval, wins/losses)", "",
                      "| representation | shift | " + " | ".join(f"{k} shot" for k in args.shots) + " |",
                      "|---|---|" + "---|" * len(args.shots)]
            for rep in feats:
                if probe != "ridge" and rep in ("loo_select", "loo_scale"):
                    continue
                cells = []
                for shots in args.shots:
                    mine, base = scores[probe][str(shots)][rep], scores[probe][str(shots)]["backbone"]
                    mean = sum(mine) / len(mine)
                    if rep == "backbone":
                        cells.append(f"{mean:.3f}")
                    else:
                        s = paired_summary(mine, base)
                        cells.append(f"{mean:.3f} ({s['mean']:+.1f} [{s['low']:+.1f}, {s['high']:+.1f}] {s['wins']}/{s['losses']})")
                lines.append(f"| {rep} | {shift[rep]:.3f} | " + " | ".join(cells) + " |")
            lines.append("")
        print("\n".join(lines[-40:]), flush=True)
    RESULTS_DEV.mkdir(parents=True, exist_ok=True)
    (RESULTS_DEV / f"{args.out}.json").write_text(json.dumps(payload, indent=1) + "\n")
    header = f"Command: `{payload['command']}`\n\nMachine: {payload['machine']}\n\n"
    (RESULTS_DEV / f"{args.out}.md").write_text(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Midstream benchmark: each default-zoo module against a linear probe on its own task.

    python benchmarks/midstream.py [--zoo runs/demo/zoo]

Builds the default zoo if needed (or reuses a verified one), then trains a linear probe
on the frozen backbone with the same data, seed and image budget as each module
(probe learning rate chosen on validation), and scores both on the task's test split.
Also reports the size of one convpass module against the backbone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ensure_zoo, write_results  # noqa: E402

from vimw.backbones import create_backbone  # noqa: E402
from vimw.data import load_task  # noqa: E402
from vimw.training import TaskModel, evaluate, fit, head_config_for  # noqa: E402
from vimw.workflows.midstream import DEFAULT_BACKBONE, DEFAULT_IMAGE_SIZE, DEFAULT_RECIPE  # noqa: E402

PROBE_LRS = (3e-3, 3e-2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", default="runs/demo/zoo")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    started = time.perf_counter()
    zoo = ensure_zoo(args.zoo, device=args.device)
    build_seconds = time.perf_counter() - started
    backbone = create_backbone(DEFAULT_BACKBONE, image_size=DEFAULT_IMAGE_SIZE).to(args.device)
    rows = []
    for recipe in DEFAULT_RECIPE:
        manifest = zoo.manifest(recipe.name)
        data = load_task(recipe.task, seed=recipe.train.seed, max_train=recipe.max_train, max_test=recipe.max_test)
        best = None
        for lr in PROBE_LRS:
            probe = TaskModel(backbone, head_config_for(backbone, data.kind, data.num_classes)).to(args.device)
            result = fit(probe, data, recipe.train.replace(lr=lr), progress=False)
            if best is None or result.best_score > best[1].best_score:
                best = (lr, result, probe)
        lr, result, probe = best
        probe_test = evaluate(probe, data.test)["score"]
        rows.append({
            "module": recipe.name, "task": recipe.task, "kind": data.kind,
            "metric": "mIoU" if data.kind == "segmentation" else "accuracy",
            "train_images": len(data.train), "test_images": len(data.test), "epochs": recipe.train.epochs,
            "module_test": manifest.metrics["test_score"], "module_val": manifest.metrics["val_score"],
            "probe_test": probe_test, "probe_val": result.best_score, "probe_lr": lr,
            "module_seconds": manifest.training.get("seconds"), "probe_seconds": round(result.seconds, 1),
            "module_parameters": manifest.num_parameters, "probe_trainable": probe.num_trainable(),
        })
        print(rows[-1], flush=True)
    backbone_params = backbone.num_parameters()
    module_params = rows[0]["module_parameters"]
    lines = [
        f"Default zoo on {DEFAULT_BACKBONE} at {DEFAULT_IMAGE_SIZE} px (built or verified in {build_seconds:.0f} s).",
        f"One convpass module (d = 8, all {len(backbone.sites)} sites): {module_params:,} parameters = "
        f"{100 * module_params / backbone_params:.2f}% of the backbone's {backbone_params:,}.",
        "",
        "| module | task | metric | train imgs | test imgs | module test | linear probe test | module wins |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['module']} | {r['task']} | {r['metric']} | {r['train_images']} | {r['test_images']} | "
            f"{r['module_test']:.4f} | {r['probe_test']:.4f} | {'yes' if r['module_test'] > r['probe_test'] else 'NO'} |"
        )
    markdown = "\n".join(lines)
    print(markdown)
    write_results("midstream", {"rows": rows, "backbone_parameters": backbone_params,
                                "module_fraction": module_params / backbone_params}, markdown)


if __name__ == "__main__":
    main()

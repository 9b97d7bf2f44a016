"""``vimw demo``: the whole story on the built-in default, with real weights and real images.

1. the backbone's own ImageNet predictions on the bundled photos;
2. the demo zoo (four of the default zoo's midstream modules on EfficientNet-Lite0 at 64 px,
   two trained at a time), built once
   and reused when it verifies;
3. ViM aggregation on Fashion-MNIST footwear-and-bags (classes the zoo never saw),
   few-shot: the zoo methods against a linear probe and a module from scratch, and what
   ``auto`` keeps on validation;
4. TransMiter: the weak model's adaptation moved to a stronger model (when available).
"""

from __future__ import annotations

import time
from pathlib import Path

# The candidates of ``vimw aggregate --method auto`` (baselines, ViM's ens and uniform, gates
# fitted to a held-out loss, a zoo-initialised module); full fine-tuning is left to the benchmark.
DEMO_METHODS = ("linear_probe", "scratch", "uniform", "ens", "gates_ridge", "zoo_init")


def register(commands) -> None:
    parser = commands.add_parser("demo", help="run the end-to-end demo (zoo, aggregation, baselines, transfer)")
    parser.add_argument("--workdir", default="runs/demo", help="where the zoo, models and results go")
    parser.add_argument("--task", default="fmnist-footwear-bags")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-test", type=int, default=2000, help="test images scored per method")
    parser.add_argument("--skip-transfer", action="store_true")
    parser.set_defaults(handler=run)


def _photos(directory: Path) -> list[Path]:
    import numpy as np
    import skimage.data
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("chelsea", "coffee"):
        path = directory / f"{name}.png"
        if not path.exists():
            Image.fromarray(np.asarray(getattr(skimage.data, name)())).save(path)
        paths.append(path)
    return paths


def run(args) -> int:
    from vimw.aggregation import save_downstream
    from vimw.aggregation.plot import plot_gates
    from vimw.backbones import create_backbone
    from vimw.cli.predict import print_predictions
    from vimw.workflows.predict import load_predictor, predict_files
    from vimw.data import load_task
    from vimw.workflows.compare import AUTO_CANDIDATES, choose, compare_methods, format_table, summarise
    from vimw.workflows.downstream import ZOO_METHODS
    from vimw.io import atomic_write_text, write_json
    from vimw.io.names import GATES_PLOT_FILE
    from vimw.zoo import Zoo
    from vimw.workflows.midstream import DEFAULT_BACKBONE, DEFAULT_IMAGE_SIZE, DEMO_RECIPE, build_zoo

    workdir = Path(args.workdir)
    started = time.perf_counter()
    print("== 1. Real pretrained weights: EfficientNet-Lite0 on the bundled photos ==")
    photos = _photos(workdir / "photos")
    print_predictions(predict_files(photos, load_predictor(backbone=DEFAULT_BACKBONE), top=3)[0])

    print("\n== 2. The demo zoo (EfficientNet-Lite0, 64 px) ==")
    zoo_started = time.perf_counter()
    zoo = Zoo(workdir / "zoo")
    problems = zoo.verify() if len(zoo) else []
    if problems:
        raise SystemExit("the demo zoo does not verify:\n  " + "\n  ".join(problems))
    build_zoo(zoo.root, DEMO_RECIPE, jobs=2)
    for name, entry in zoo.list():
        print(f"  {name:22s} {entry['kind']:9s} task {entry['task']:20s} val {entry['score']:.4f}")
    print(f"  zoo ready in {time.perf_counter() - zoo_started:.0f} s")

    print(f"\n== 3. ViM aggregation on {args.task}, {args.shots} shots per class, seed {args.seed} ==")
    backbone = create_backbone(DEFAULT_BACKBONE, image_size=DEFAULT_IMAGE_SIZE)
    data = load_task(args.task, shots=args.shots, seed=args.seed, max_test=args.max_test)
    print(f"  train {len(data.train)}, val {len(data.val)}, test {len(data.test)} images; "
          f"classes: {', '.join(data.class_names)}")
    models_dir = workdir / "models"

    def keep(row, result):
        print(f"  {row.method:13s} val {row.val:.4f}  test {row.test:.4f}  ({row.trainable:,} trainable, "
              f"lr {row.lr:g}{'' if row.gate_lr is None else f', gate lr {row.gate_lr:g}'}, {row.seconds:.1f} s)")
        if row.method == "full_ft":
            return
        out = models_dir / row.method
        save_downstream(out, result.model, {"method": row.method, **result.info,
                                             "task": {**data.spec.to_dict(), "shots": args.shots, "seed": args.seed},
                                             "class_names": list(data.class_names), "metrics": row.to_dict()})
        if result.model.plugin is not None and hasattr(result.model.plugin, "gate_logits"):
            plot_gates(result.model.plugin, out / GATES_PLOT_FILE, title=f"{row.method} gates on {data.spec.name}")

    vim_started = time.perf_counter()
    rows = compare_methods(backbone, data, DEMO_METHODS, zoo=zoo, seed=args.seed, shots=args.shots, on_result=keep,
                           augment=True)
    # Chosen on validation only (accuracy, ties to the lower loss); test is what they then score.
    for label, among in (("auto", AUTO_CANDIDATES), ("best_zoo", ZOO_METHODS)):
        picked = choose(rows, among, label)
        if picked is not None:
            rows.append(picked)
            print(f"  {label:13s} chose {picked.chosen} on validation (val {picked.val:.4f}, loss "
                  f"{picked.val_loss:.4f}): test {picked.test:.4f}")
    print(f"  aggregation and baselines trained and scored in {time.perf_counter() - vim_started:.0f} s")
    table = format_table(summarise(rows))
    print("\n" + table)
    write_json(workdir / "vim_results.json", {"rows": [r.to_dict() for r in rows]})
    atomic_write_text(workdir / "vim_results.md", table + "\n")
    print(f"\n  gate heatmap: {models_dir / 'ens' / GATES_PLOT_FILE}")

    if not args.skip_transfer:
        from vimw.cli.transfer import run_demo_step

        print("\n== 4. TransMiter: a weak model's adaptation moved to a stronger model, no backprop ==")
        run_demo_step(workdir, seed=args.seed)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; results in {workdir}")
    return 0

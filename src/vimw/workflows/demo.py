"""The end-to-end demo on the built-in default, with real weights and real images (``vimw demo``).

1. the backbone's own ImageNet predictions on two bundled photos;
2. the demo zoo (four of the default zoo's midstream modules on EfficientNet-Lite0 at 64 px,
   two trained at a time), built once and reused when it verifies;
3. ViM aggregation on Fashion-MNIST footwear-and-bags (classes the zoo never saw), few-shot:
   ``auto``'s candidates side by side (the zoo methods, a linear probe, a new module), each
   searched and saved as ``vimw aggregate`` would, and what ``auto`` keeps on validation;
4. TransMiter: the weak model's adaptation moved to a stronger model.

:class:`DemoSettings` holds its defaults; the built-in recipe's aggregation is the demo's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vimw.io.names import DEMO_MODELS_DIR, DEMO_PHOTOS_DIR, DEMO_VIM_RESULTS, DEMO_ZOO_DIR, GATES_PLOT_FILE
from vimw.workflows.aggregate import AggregateSettings
from vimw.workflows.compare import SearchSettings


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs on, and where it writes."""

    workdir: str = "runs/demo"
    task: str = "fmnist-footwear-bags"
    shots: int = 10
    seed: int = 0
    max_test: int = 2000  # test images scored per method
    jobs: int = 2  # zoo modules trained at once
    transfer: bool = True
    steps: int = SearchSettings.steps  # optimiser steps per training run of a method

    @property
    def zoo_dir(self) -> str:
        return f"{self.workdir}/{DEMO_ZOO_DIR}"

    def aggregate_settings(self) -> AggregateSettings:
        """The demo's aggregation as ``vimw aggregate`` settings (the built-in recipe's section)."""
        return AggregateSettings(zoo=self.zoo_dir, task=self.task, shots=self.shots, out=f"{self.workdir}/{DEMO_MODELS_DIR}/recipe",
                                 search=SearchSettings(seed=self.seed, steps=self.steps))


PHOTOS = ("chelsea", "coffee")  # scikit-image's bundled photos: an Egyptian cat and an espresso


def demo_photos(directory: Path) -> list[Path]:
    """The bundled photos as PNG files (written once)."""
    import numpy as np
    import skimage.data
    from PIL import Image

    from vimw.io import atomic_write_bytes

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        path = directory / f"{name}.png"
        if not path.exists():
            import io

            buffer = io.BytesIO()
            Image.fromarray(np.asarray(getattr(skimage.data, name)())).save(buffer, format="PNG")
            atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def step_predictions(settings: DemoSettings, say: Callable[[str], None]):
    """Step 1: real ImageNet predictions of the default backbone."""
    from vimw.workflows.midstream import DEFAULT_BACKBONE
    from vimw.workflows.predict import format_predictions, load_predictor, predict_files

    photos = demo_photos(Path(settings.workdir) / DEMO_PHOTOS_DIR)
    predictions, _ = predict_files(photos, load_predictor(backbone=DEFAULT_BACKBONE), top=3)
    say(format_predictions(predictions))
    return predictions


def step_zoo(settings: DemoSettings, say: Callable[[str], None]):
    """Step 2: the demo zoo, built (two modules at a time) unless it is there and verifies."""
    from vimw.errors import VimwError
    from vimw.workflows.midstream import DEMO_RECIPE, build_zoo
    from vimw.zoo import Zoo

    started = time.perf_counter()
    zoo = Zoo(settings.zoo_dir)
    problems = zoo.verify() if len(zoo) else []
    if problems:
        raise VimwError(f"the demo zoo {zoo.root} does not verify (run 'vimw zoo verify --repair --zoo {zoo.root}'):"
                        "\n  " + "\n  ".join(problems))
    build_zoo(zoo.root, DEMO_RECIPE, jobs=settings.jobs)
    for name, entry in zoo.list():
        say(f"  {name:22s} {entry['kind']:9s} task {entry['task']:20s} val {entry['score']:.4f}")
    say(f"  zoo ready in {time.perf_counter() - started:.0f} s")
    return zoo


def step_aggregation(settings: DemoSettings, zoo, say: Callable[[str], None]) -> list:
    """Step 3: auto's candidates side by side, each saved like ``vimw aggregate`` saves it; then the choices."""
    from vimw.data import load_task
    from vimw.methods import auto_candidates, get_method, zoo_methods
    from vimw.workflows.aggregate import open_zoo, save_model
    from vimw.workflows.compare import choose, compare_methods
    from vimw.workflows.reporting import SearchReporter

    aggregate = settings.aggregate_settings()
    _, backbone = open_zoo(aggregate)
    data = load_task(settings.task, shots=settings.shots, seed=settings.seed, max_test=settings.max_test)
    say(f"  train {len(data.train)}, val {len(data.val)}, test {len(data.test)} images; "
        f"classes: {', '.join(data.class_names)}")
    search = aggregate.search
    models = Path(settings.workdir) / DEMO_MODELS_DIR

    def keep(row, result):
        how = ("closed form" if get_method(row.method).closed_form else
               f"lr {row.lr:g}{'' if row.gate_lr is None else f', gate lr {row.gate_lr:g}'}")
        say(f"  {row.method:13s} val {row.val:.4f}  test {row.test:.4f}  ({row.trainable:,} trainable, {how}, "
            f"{row.seconds:.1f} s)")
        if get_method(row.method).saved:
            config = search.base_config(len(data.train)).replace(lr=row.lr, gate_lr=row.gate_lr)
            save_model(models / row.method, result, data, config, shots=settings.shots, test=row.test_metrics,
                       search={"selection": row.selection, "candidates": row.candidates})

    started = time.perf_counter()
    # auto's candidates, and the baselines the README's story shows beside them (the ViM paper's ens).
    shown = (*auto_candidates(), *(m for m in ("linear_probe", "ens") if m not in auto_candidates()))
    rows = compare_methods(backbone, data, shown, zoo=zoo, shots=settings.shots, settings=search,
                           on_result=keep, reporter=SearchReporter(say))
    # Chosen on validation only (accuracy, ties to the lower loss); test is what they then score.
    for label, among in (("auto", auto_candidates()), ("best_zoo", zoo_methods())):
        picked = choose(rows, among, label)
        if picked is not None:
            rows.append(picked)
            say(f"  {label:13s} chose {picked.chosen} on validation (val {picked.val:.4f}, loss "
                f"{picked.val_loss:.4f}, {len(data.val)} validation images): test {picked.test:.4f}")
    say(f"  aggregation and baselines trained and scored in {time.perf_counter() - started:.0f} s")
    return rows


def write_results(settings: DemoSettings, rows: list) -> str:
    """The aggregation table, written as ``vim_results.json`` / ``.md`` in the work directory."""
    from vimw.io import atomic_write_text, write_json
    from vimw.workflows.compare import format_table, summarise

    table = format_table(summarise(rows))
    write_json(Path(settings.workdir) / f"{DEMO_VIM_RESULTS}.json", {"rows": [r.to_dict() for r in rows]})
    atomic_write_text(Path(settings.workdir) / f"{DEMO_VIM_RESULTS}.md", table + "\n")
    return table


def step_transfer(settings: DemoSettings, say: Callable[[str], None]) -> dict:
    """Step 4: TransMiter on small image counts (the logits are cached)."""
    from vimw.transfer.demo import demo_step

    started = time.perf_counter()
    result, text = demo_step(Path(settings.workdir), seed=settings.seed, say=say)
    say(text)
    say(f"  transfer step finished in {time.perf_counter() - started:.0f} s")
    return result


def run_demo(settings: DemoSettings = DemoSettings(), say: Callable[[str], None] = print) -> dict:
    """The four steps, telling the story through ``say``; returns what each step produced."""
    started = time.perf_counter()
    say("== 1. Real pretrained weights: EfficientNet-Lite0 on the bundled photos ==")
    outcome: dict = {"predictions": step_predictions(settings, say)}
    say("\n== 2. The demo zoo (EfficientNet-Lite0, 64 px) ==")
    zoo = step_zoo(settings, say)
    say(f"\n== 3. ViM aggregation on {settings.task}, {settings.shots} shots per class, seed {settings.seed} ==")
    outcome["aggregation"] = step_aggregation(settings, zoo, say)
    say("\n" + write_results(settings, outcome["aggregation"]))
    say(f"\n  gate heatmap: {Path(settings.workdir) / DEMO_MODELS_DIR / 'ens' / GATES_PLOT_FILE}")
    if settings.transfer:
        say("\n== 4. TransMiter: a weak model's adaptation moved to a stronger model, no backprop ==")
        outcome["transfer"] = step_transfer(settings, say)
    say(f"\ndemo finished in {time.perf_counter() - started:.0f} s; results in {settings.workdir}")
    return outcome


__all__ = ["DemoSettings", "run_demo", "demo_photos", "step_aggregation", "step_predictions", "step_transfer", "step_zoo",
           "write_results"]

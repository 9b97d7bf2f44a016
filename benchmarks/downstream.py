"""ViM downstream benchmark: aggregation modes against the baselines, few-shot.

    python benchmarks/downstream.py [--zoo runs/demo/zoo] [--device cpu|cuda]

For each task x shots x seed, every method trains in the same harness on the same
k-shot split (validation carved from training data), its learning rate chosen on the
validation split; the chosen model is scored once on the test split. Writes
``results/downstream.{json,md}`` (rewritten after every run, so partial results
survive), a gate heatmap for every ``ens`` run under ``results/gates/`` and, at the
end, test accuracy against shots per task (``results/downstream-<task>.png``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, ensure_zoo, write_results  # noqa: E402

from vimw.workflows.downstream import METHODS  # noqa: E402
from vimw.aggregation.plot import plot_gates  # noqa: E402
from vimw.backbones import create_backbone  # noqa: E402
from vimw.data import load_task  # noqa: E402
from vimw.workflows.compare import compare_methods, format_table, summarise  # noqa: E402
from vimw.workflows.midstream import DEFAULT_BACKBONE, DEFAULT_IMAGE_SIZE  # noqa: E402

TASKS = ("fmnist-footwear-bags", "fmnist", "digits8x8")
SHOTS = (5, 10, 20)
SEEDS = (0, 1, 2)
DEFAULT_METHODS = ("linear_probe", "scratch", "full_ft", "ens", "topk", "uniform", "merge", "single")


def headline(summary: list[dict]) -> str:
    """The paper's claim, checked: at 5 and 10 shots, ens vs linear probe and scratch, averaged over tasks."""
    lines = ["", "Average over tasks (test accuracy):", "", "| shots | " + " | ".join(DEFAULT_METHODS) + " |",
             "|---:|" + "---:|" * len(DEFAULT_METHODS)]
    for shots in sorted({s["shots"] for s in summary}):
        cells = []
        for method in DEFAULT_METHODS:
            values = [s["test_mean"] for s in summary if s["shots"] == shots and s["method"] == method]
            cells.append(f"{sum(values) / len(values):.4f}" if values else "-")
        lines.append(f"| {shots} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_shots(summary: list[dict], name: str) -> None:
    """One accuracy-against-shots PNG per task next to the table: ``results/<name>-<task>.png``."""
    from vimw.report.plots import accuracy_vs_shots

    for task in sorted({s["task"] for s in summary}):
        accuracy_vs_shots(summary, task, RESULTS / f"{name}-{task}.png")


def merge(args) -> None:
    """Combine partial result files (run in parallel processes) into one table."""
    from vimw.workflows.compare import MethodRow
    from vimw.io import read_json

    rows, parts = [], []
    for path in args.merge:
        payload = read_json(path)
        rows += [MethodRow(**r) for r in payload["rows"]]
        parts.append({"file": Path(path).name, "command": payload["command"], "seconds": payload.get("seconds")})
    summary = summarise(rows)
    markdown = format_table(summary) + "\n" + headline(summary)
    write_results(args.name, {"parts": parts, "rows": [r.to_dict() for r in rows], "summary": summary}, markdown)
    plot_shots(summary, args.name)
    print(markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", default="runs/demo/zoo")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--shots", nargs="+", type=int, default=list(SHOTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument("--max-test", type=int, default=2000, help="test images per task (stratified, fixed)")
    parser.add_argument("--target-steps", type=int, default=120, help="optimiser steps per training run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="downstream", help="results file stem")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="only merge the rows of earlier partial runs (e.g. one per task and seed) into --name")
    args = parser.parse_args()
    if args.merge:
        merge(args)
        return

    zoo = ensure_zoo(args.zoo, device=args.device)
    backbone = create_backbone(DEFAULT_BACKBONE, image_size=DEFAULT_IMAGE_SIZE).to(args.device)
    gates_dir = RESULTS / "gates"
    gates_dir.mkdir(parents=True, exist_ok=True)
    rows, started = [], time.perf_counter()

    def save(rows_so_far):
        summary = summarise(rows_so_far)
        markdown = format_table(summary) + "\n" + headline(summary)
        write_results(args.name, {
            "settings": {k: v for k, v in vars(args).items()},
            "zoo": [name for name, _ in zoo.list()],
            "seconds": round(time.perf_counter() - started, 1),
            "rows": [r.to_dict() for r in rows_so_far],
            "summary": summary,
        }, markdown)
        return markdown

    def record(row, result):
        save(rows + done_here + [row])
        done_here.append(row)
        print(f"{row.task:22s} k={row.shots:<3d} seed {row.seed} {row.method:13s} val {row.val:.4f} "
              f"test {row.test:.4f} lr {row.lr:g} ({row.seconds:.1f} s)", flush=True)
        if row.method == "ens":
            plot_gates(result.model.plugin, gates_dir / f"{row.task}-k{row.shots}-s{row.seed}.png",
                       title=f"ens gates: {row.task}, {row.shots} shots, seed {row.seed}")

    for task in args.tasks:
        for shots in args.shots:
            for seed in args.seeds:
                data = load_task(task, shots=shots, seed=seed, max_test=args.max_test)
                done_here: list = []
                rows += compare_methods(backbone, data, args.methods, zoo=zoo, seed=seed, shots=shots,
                                        target_steps=args.target_steps, on_result=record)
    print(save(rows))
    plot_shots(summarise(rows), args.name)


if __name__ == "__main__":
    main()

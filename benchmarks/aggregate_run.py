"""A recorded run of the default ``vimw aggregate`` on a folder of real images, as a newcomer would run it.

The folder holds Fashion-MNIST footwear-and-bags test images written as PNG files (one
sub-folder per class), and the zoo is the default ten-module zoo; the command is the
default one (``--method auto``, ``--budget 900``) with ``--shots 5``, run as a separate
process with its output read line by line, so every line gets the time it appeared. The
record (every line with its time, the longest silence, the total time against the budget)
goes to ``results/aggregate_run.{json,md}``.

    python benchmarks/aggregate_run.py                 # the default: --budget 900
    python benchmarks/aggregate_run.py --budget 60 --name aggregate_run-budget60   # a budget the search reaches
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_zoo, record_lines, write_results  # noqa: E402


def write_folder(root: Path, per_class: int) -> Path:
    """Footwear-and-bags test images as ``root/<class>/<n>.png`` (real photos of real products)."""
    from PIL import Image

    from vimw.data import load_task

    if root.exists():
        shutil.rmtree(root)
    data = load_task("fmnist-footwear-bags", seed=0)
    counts: dict[int, int] = {}
    for image, label in zip(data.test.images, data.test.targets.tolist()):
        if counts.get(label, 0) >= per_class:
            continue
        folder = root / data.class_names[label].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / f"{counts.get(label, 0):03d}.png")
        counts[label] = counts.get(label, 0) + 1
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", default="runs/zoo")
    parser.add_argument("--budget", type=float, default=900.0)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=40, help="images per class written to the folder")
    parser.add_argument("--work", default="runs/aggregate-run")
    parser.add_argument("--name", default="aggregate_run", help="results file name under benchmarks/results")
    args = parser.parse_args()

    ensure_zoo(args.zoo)
    work = Path(args.work)
    folder = write_folder(work / "photos", args.per_class)
    out = work / "model"
    command = [str(Path(sys.executable).parent / "vimw"), "aggregate", "--zoo", args.zoo, "--task", f"folder:{folder}",
               "--shots", str(args.shots), "--budget", f"{args.budget:g}", "--out", str(out), "--overwrite"]
    run = record_lines(command)
    lines = run.pop("lines")
    summary = {**run, "budget": args.budget, "within_10_percent": run["total_seconds"] <= 1.1 * args.budget}
    body = [f"`{' '.join(command[1:])}` (the default method, auto, and its default budget unless given)", "",
            f"- exit code {summary['exit_code']}; {summary['total_seconds']} s in all against a budget of "
            f"{args.budget:g} s ({'within' if summary['within_10_percent'] else 'NOT within'} 10%)",
            f"- the longest time without a line: {summary['longest_silence_seconds']} s",
            f"- load average at the end: {summary['load_average']}", "", "```text",
            *[f"[{e['t']:7.1f} s] {e['line']}" for e in lines], "```"]
    write_results(args.name, {"summary": summary, "lines": lines}, "\n".join(body))


if __name__ == "__main__":
    main()

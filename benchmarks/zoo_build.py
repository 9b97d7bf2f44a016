"""Wall time of a zoo build with 1 and with N jobs (modules trained at once in separate processes).

    python benchmarks/zoo_build.py [--jobs 1 2] [--modules NAME ...] [--demo]

Builds the chosen modules of the default zoo recipe (default: all ten; ``--demo``: the demo's
four) from nothing into a fresh temporary directory once per ``--jobs`` value, back to back,
with the recipe's own settings, and reports the wall time, the ratio against the first
``--jobs`` value, each module's training seconds, and the load average before and after
each build (the machine may be shared: a loaded machine slows every build).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402

from vimw.workflows.midstream import DEFAULT_RECIPE, DEMO_MODULES, build_zoo  # noqa: E402
from vimw.zoo import verify_or_raise  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--modules", nargs="+", help="names from the default recipe (default: all)")
    parser.add_argument("--demo", action="store_true", help="the demo's subset")
    parser.add_argument("--name", default="zoo_build")
    args = parser.parse_args()
    wanted = set(args.modules or (DEMO_MODULES if args.demo else [r.name for r in DEFAULT_RECIPE]))
    recipes = tuple(r for r in DEFAULT_RECIPE if r.name in wanted)
    rows = []
    for jobs in args.jobs:
        with tempfile.TemporaryDirectory(prefix="vimw-zoo-build-") as tmp:
            load_before = os.getloadavg()
            started = time.perf_counter()
            zoo = build_zoo(Path(tmp) / "zoo", recipes, jobs=jobs)
            seconds = time.perf_counter() - started
            verify_or_raise(zoo)
            modules = {n: zoo.manifest(n).training.get("seconds") for n in zoo.names()}
            rows.append({"jobs": jobs, "seconds": round(seconds, 1), "load_before": [round(x, 2) for x in load_before],
                         "load_after": [round(x, 2) for x in os.getloadavg()], "module_training_seconds": modules})
            print(rows[-1], flush=True)
    base = rows[0]["seconds"]
    lines = [f"Modules: {', '.join(r.name for r in recipes)} (default recipe settings), {os.cpu_count()} CPUs.", "",
             "| jobs | wall s | vs first | load average before | load average after |", "|---:|---:|---:|---|---|"]
    lines += [f"| {r['jobs']} | {r['seconds']:.0f} | {r['seconds'] / base:.2f}x | {r['load_before']} | "
              f"{r['load_after']} |" for r in rows]
    markdown = "\n".join(lines)
    print(markdown)
    write_results(args.name, {"settings": vars(args), "modules": sorted(wanted), "rows": rows}, markdown)


if __name__ == "__main__":
    main()

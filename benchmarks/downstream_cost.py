"""What ``vimw aggregate``'s default run (auto) costs against a single ``--method scratch`` run (issue 23).

Both as a user runs them, true few-shot at ``--shots 5``: each command runs in its own process,
one after the other on the same task and seed; its wall time and its CPU time (user + system
of the child process, which a shared machine's load moves less) are measured. The issue's goal:
auto costs at most 2x scratch. Development tasks and seeds (the cost does not need evaluation
data).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/downstream_cost.py --zoo runs/zoo
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def timed(argv: list[str]) -> dict:
    """Run one command; its wall seconds, its CPU seconds, and the lines it printed about auto."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    said = [line for line in done.stdout.splitlines() if "zoo" in line and "using" in line or line.startswith(
        "auto chose")]
    return {"wall": round(wall, 1), "cpu": round(cpu, 1), "said": said, "last": done.stdout.splitlines()[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", default="runs/zoo")
    parser.add_argument("--tasks", nargs="+", default=["fmnist-apparel", "photos"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[100, 101])
    parser.add_argument("--shots", type=int, default=5)
    args = parser.parse_args()
    vimw = str(Path(sys.executable).with_name("vimw"))
    runs = []
    with tempfile.TemporaryDirectory() as work:
        for task in args.tasks:
            for seed in args.seeds:
                base = [vimw, "aggregate", "--zoo", args.zoo, "--task", task, "--shots", str(args.shots),
                        "--seed", str(seed), "--no-progress", "--overwrite"]
                scratch = timed([*base, "--method", "scratch", "--out", f"{work}/scratch"])
                auto = timed([*base, "--out", f"{work}/auto"])
                runs.append({"task": task, "seed": seed, "scratch": scratch, "auto": auto,
                             "ratio_wall": round(auto["wall"] / scratch["wall"], 3),
                             "ratio_cpu": round(auto["cpu"] / scratch["cpu"], 3)})
                print(runs[-1], flush=True)
    worst = max(r["ratio_cpu"] for r in runs)
    lines = [f"# vimw aggregate at --shots {args.shots}: the default (auto) vs --method scratch", "",
             "Each command in its own process, one after the other, same task and seed (development tasks and "
             "seeds). CPU: user + system seconds of the process (one torch thread).", "",
             "| task | seed | scratch wall s | scratch CPU s | auto wall s | auto CPU s | auto / scratch (CPU) | "
             "auto / scratch (wall) | auto said |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['task']} | {r['seed']} | {r['scratch']['wall']} | {r['scratch']['cpu']} | {r['auto']['wall']}"
                     f" | {r['auto']['cpu']} | {r['ratio_cpu']:.2f} | {r['ratio_wall']:.2f} | "
                     f"{' / '.join(r['auto']['said'])} |")
    lines += ["", f"Goal (auto at most 2x a scratch run): largest CPU ratio {worst:.2f}: "
              f"**{'met' if worst <= 2 else 'not met'}**."]
    write_results("downstream-cost", {"shots": args.shots, "runs": runs, "max_ratio_cpu": worst,
                                      "goal_met": worst <= 2}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

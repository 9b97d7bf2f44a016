"""A recorded run of the README's main command, ``bash scripts/demo.sh``, from a fresh clone.

The repository at HEAD is cloned into a new directory, and the demo runs there as a newcomer
would run it: setup included (a new virtual environment and its packages), the demo zoo built
from nothing. Every line is kept with the time it appeared; the record (the total, each
step's time, the longest silence and the output) goes to ``results/demo_run.{json,md}``.

    python benchmarks/demo_run.py
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record_lines, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"zoo": r"zoo ready in (\d+) s", "aggregation": r"trained and scored in (\d+) s",
         "transfer": r"transfer step finished in (\d+) s", "demo": r"demo finished in (\d+) s"}


def step_seconds(lines: list[dict]) -> dict[str, int]:
    """Each step's own time, as the demo printed it."""
    out = {}
    for name, pattern in STEPS.items():
        for entry in lines:
            found = re.search(pattern, entry["line"])
            if found:
                out[name] = int(found.group(1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the clone (default: removed afterwards)")
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    clone = Path(tempfile.mkdtemp(prefix="vimw-demo-")) / "vimw"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    try:
        run = record_lines(["bash", "scripts/demo.sh"], cwd=clone)
    finally:
        if not args.keep:
            shutil.rmtree(clone.parent, ignore_errors=True)
    lines = run.pop("lines")
    steps = step_seconds(lines)
    summary = {**run, "commit": head.strip(), "steps_seconds": steps}
    body = [f"`bash scripts/demo.sh` in a fresh clone of commit {head.strip()[:10]} (setup included)", "",
            f"- exit code {summary['exit_code']}; {summary['total_seconds']} s in all, setup included",
            f"- the demo's own steps: " + ", ".join(f"{k} {v} s" for k, v in steps.items()),
            f"- the longest time without a line: {summary['longest_silence_seconds']} s",
            f"- load average at the end: {summary['load_average']}", "", "```text",
            *[f"[{e['t']:7.1f} s] {e['line']}" for e in lines], "```"]
    write_results("demo_run", {"summary": summary, "lines": lines}, "\n".join(body))


if __name__ == "__main__":
    main()

"""Shared bits of the benchmark scripts: where results go, machine info, the exact command."""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable), *sys.argv])


@functools.lru_cache(maxsize=None)
def code_version(*watched: str) -> str:
    """The commit this process's code came from, ``+changes`` when a ``watched`` path differed from it.

    Cached: the first call (a benchmark's ``main`` makes it before any unit) fixes the answer for the
    process, so a unit written after later commits still names the code that was loaded."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return (git("rev-parse", "HEAD") or "unknown") + ("+changes" if git("status", "--porcelain", "--", *watched) else "")


def protocol_outputs(protocol: dict, name: str) -> tuple[Path, str]:
    """Where a protocol's unit files go and its report's name: the file's ``units`` and
    ``report`` keys, else ``<name>-units`` and ``name`` (a later protocol names its own, so its
    units never mix with an earlier one's)."""
    return RESULTS / protocol.get("units", f"{name}-units"), protocol.get("report", name)


def claim(claims: Path, name: str) -> bool:
    """Take the unit ``name`` for this process, so that several processes share one plan.

    False when a live process holds it. A claim names its process: one left by a process that
    has ended (a stopped session) is taken over, so a resumed run does not skip its units."""
    claims.mkdir(parents=True, exist_ok=True)
    path = claims / name
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = path.read_text().strip()
            if holder.isdigit() and _alive(int(holder)):
                return False
            path.unlink(missing_ok=True)  # its process ended: the unit is free again
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def commit_file(path: Path, message: str) -> None:
    """Commit one result file on its own (retrying while another commit holds the index)."""
    import subprocess
    import time

    root = Path(__file__).resolve().parent.parent
    for _ in range(30):
        added = subprocess.run(["git", "add", "--", str(path)], cwd=root, capture_output=True, text=True)
        done = subprocess.run(["git", "commit", "-q", "-m", message, "--", str(path)], cwd=root,
                              capture_output=True, text=True) if added.returncode == 0 else added
        if done.returncode == 0:
            return
        if "index.lock" not in done.stderr:
            print(f"commit of {path.name} failed: {done.stderr.strip()}", flush=True)
            return
        time.sleep(5)


def machine() -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def write_results(name: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` and ``results/<name>.md``, both naming the command."""
    from vimw.io import atomic_write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"command": command_line(), "machine": machine(), **payload}
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
    header = f"Command: `{payload['command']}`\n\nMachine: {payload['machine']}\n\n"
    atomic_write_text(md_path, header + markdown + "\n")
    return json_path, md_path


def sweep_parser(doc: str | None, *, zoo: str, tasks: list[str], shots: list[int]) -> argparse.ArgumentParser:
    """A parser with the options every few-shot sweep takes: --zoo, --tasks, --shots, --seeds (default 0)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", default=zoo)
    parser.add_argument("--tasks", nargs="+", default=tasks)
    parser.add_argument("--shots", nargs="+", type=int, default=shots)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    return parser


def ensure_zoo(path: str | Path, device: str = "cpu"):
    """The zoo at ``path``: the default recipe is built when it is empty; it must verify."""
    from vimw.zoo import Zoo, verify_or_raise
    from vimw.workflows.midstream import build_zoo

    zoo = Zoo(path)
    if len(zoo) == 0:
        build_zoo(path, device=device)
    verify_or_raise(zoo)
    return zoo


def record_lines(command: list[str], *, cwd: str | Path | None = None, env: dict | None = None,
                 echo: bool = True) -> dict:
    """Run ``command`` with its output read line by line, each line stamped with the seconds since start.

    Returns ``{"exit_code", "total_seconds", "longest_silence_seconds", "lines": [{"t", "line"}],
    "load_average"}``: what a person watching the terminal saw, and when."""
    import subprocess
    import time

    started = time.perf_counter()
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}) as process:
        for line in process.stdout:
            lines.append({"t": round(time.perf_counter() - started, 1), "line": line.rstrip("\n")})
            if echo:
                print(f"[{lines[-1]['t']:7.1f}] {lines[-1]['line']}", flush=True)
    total = time.perf_counter() - started
    times = [0.0] + [entry["t"] for entry in lines] + [total]
    return {"exit_code": process.returncode, "total_seconds": round(total, 1),
            "longest_silence_seconds": round(max(b - a for a, b in zip(times, times[1:])), 1),
            "lines": lines, "load_average": [round(x, 2) for x in os.getloadavg()]}

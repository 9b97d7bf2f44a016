"""Where TransMiter+ loses to strong fine-tuning: base and novel accuracy per split, read from
the evaluation units of the TransMiter splits protocol (no new run, no choice made here).

    python benchmarks/dev/transfer_novel_gap.py     # -> results/dev/transfer-novel-gap.md

For each pair and split (mean over seeds, base-class validation, protocol (b)): the weak
zero-shot, the teacher, the strong zero-shot, the transferred adapter, TransMiter+ and strong
fine-tuning, base / novel; then the counts the development notes quote.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import RESULTS, command_line  # noqa: E402
from transfer_splits import UNITS  # noqa: E402  (protocol v2's evaluation units)

OUT = RESULTS / "dev" / "transfer-novel-gap.md"
METHODS = ("weak_zero_shot", "teacher", "strong_zero_shot", "transferred", "transmiter_plus", "strong_fine_tuned")


def split_table(protocol: str = "base") -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """{(pair, split): {method: {"base", "novel", "hm", "seeds"}}}, means over seeds."""
    values: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(UNITS.glob("*.json")):
        unit = json.loads(path.read_text())
        for r in unit["rows"]:
            if r["protocol"] == protocol and r["method"] in METHODS:
                values[(r["pair"], r["split"])][r["method"]].append(r)
    return {key: {m: {k: float(np.mean([r[k] for r in rows])) for k in ("base", "novel", "hm")} | {"seeds": len(rows)}
                  for m, rows in by.items()} for key, by in values.items()}


def main() -> int:
    table = split_table()
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    lines = ["# Base and novel accuracy per split: where TransMiter+ loses to strong fine-tuning", "",
             f"Command: `{command_line()}` (reads `{UNITS.relative_to(RESULTS.parent.parent)}`; protocol (b), "
             "base-class validation; mean over seeds; base / novel accuracy in %)", "",
             "| pair | split | seeds | " + " | ".join(METHODS) + " |", "|---|---|---|" + "---|" * len(METHODS)]
    for (pair, split), by in sorted(table.items()):
        lines.append(f"| {pair} | {split} | {by['teacher']['seeds']} | " + " | ".join(
            f"{pct(by[m]['base'])} / {pct(by[m]['novel'])}" for m in METHODS) + " |")
    cells = list(table.values())

    def count(test) -> str:
        return f"{sum(bool(test(by)) for by in cells)} of {len(cells)}"

    def mean_gap(a: str, b: str, key: str) -> str:
        return f"{100 * np.mean([by[a][key] - by[b][key] for by in cells]):+.1f}"

    lines += ["", f"Over the {len(cells)} (pair, split) cells:", "",
              f"- teacher novel - weak zero-shot novel: mean {mean_gap('teacher', 'weak_zero_shot', 'novel')} points, "
              f"> 0 in {count(lambda b: b['teacher']['novel'] > b['weak_zero_shot']['novel'])};",
              f"- teacher base - weak zero-shot base: mean {mean_gap('teacher', 'weak_zero_shot', 'base')};",
              f"- transferred novel - strong zero-shot novel: mean {mean_gap('transferred', 'strong_zero_shot', 'novel')}, "
              f"<= 0 in {count(lambda b: b['transferred']['novel'] <= b['strong_zero_shot']['novel'])};",
              f"- |TransMiter+ novel - transferred novel| <= 1 point in "
              f"{count(lambda b: abs(b['transmiter_plus']['novel'] - b['transferred']['novel']) <= 0.01)};",
              f"- strong fine-tuned novel - strong zero-shot novel: mean {mean_gap('strong_fine_tuned', 'strong_zero_shot', 'novel')}, "
              f"> 0 in {count(lambda b: b['strong_fine_tuned']['novel'] > b['strong_zero_shot']['novel'])};",
              f"- TransMiter+ - strong fine-tuned: base {mean_gap('transmiter_plus', 'strong_fine_tuned', 'base')}, "
              f"novel {mean_gap('transmiter_plus', 'strong_fine_tuned', 'novel')}, HM "
              f"{mean_gap('transmiter_plus', 'strong_fine_tuned', 'hm')}; base ahead in "
              f"{count(lambda b: b['transmiter_plus']['base'] > b['strong_fine_tuned']['base'])}, novel ahead in "
              f"{count(lambda b: b['transmiter_plus']['novel'] > b['strong_fine_tuned']['novel'])}.", ""]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

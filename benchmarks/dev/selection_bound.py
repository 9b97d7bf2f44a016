"""How much of the zoo goal's failure is selection? An after-the-fact bound, never a method.

Reads a ``downstream_unseen.py`` report (its per-unit rows on the leave-overlap-out zoos) and
compares, on the mean over the unseen tasks, paired per seed against ``scratch`` (and the two
oracles against each other):

- ``best_zoo``: the zoo method the protocol's rule chose (what the report judges);
- ``oracle zoo pick``: per (task, shots, seed), the better *on test* of the protocol's
  ``best_zoo`` candidates, i.e. a perfect selector among zoo methods;
- ``oracle seed pick``: the better on test of two ``scratch`` runs on the same split that
  differ only in the training seed (``scratch`` and ``scratch@seed2``), i.e. the same
  perfect selector given no zoo at all, only training noise to pick from.

Both oracles look at test scores, so they bound what selection could give; they choose
nothing and enter no table of the protocol. If the first is not clearly above the second,
the zoo's gain on these tasks is no larger than the luck of a training seed, and no
selection rule could turn it into the protocol's goal.

    .venv/bin/python benchmarks/dev/selection_bound.py --protocol benchmarks/protocol-unseen-residual.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import RESULTS, command_line, protocol_outputs  # noqa: E402
from downstream_unseen import LOO, NAME, best_zoo_rule, complete_table, fmt, over_tasks  # noqa: E402
from transfer_splits import read_protocol  # noqa: E402

ORACLE_ZOO, ORACLE_SEED = "oracle zoo pick", "oracle seed pick"


def with_oracles(tab: dict, zoo_candidates: list[str]) -> dict:
    """``tab`` with the two oracle rows added to every cell where their inputs exist for a seed."""
    pairs = {ORACLE_ZOO: zoo_candidates, ORACLE_SEED: ["scratch", "scratch@seed2"]}
    for cell in tab.values():
        for name, members in pairs.items():
            if not all(m in cell for m in members):
                continue
            seeds = set.intersection(*[set(cell[m]) for m in members])
            cell[name] = {s: max(cell[m][s] for m in members) for s in seeds}
    return tab


def bound_table(report: dict, zoo_candidates: list[str]) -> list[dict]:
    tab = with_oracles(complete_table(report["rows"], set(report["seeds_complete"]), LOO), zoo_candidates)
    tasks = sorted({t for t, _ in tab})
    out = []
    for shots in sorted({s for _, s in tab}):
        line = {"shots": shots}
        for name in ("best_zoo", ORACLE_ZOO, ORACLE_SEED):
            line[name] = over_tasks(tab, shots, name, "scratch", tasks)
        line["zoo - seed"] = over_tasks(tab, shots, ORACLE_ZOO, ORACLE_SEED, tasks)
        out.append(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", required=True, help="the protocol whose report to read")
    args = parser.parse_args()
    protocol = read_protocol(args.protocol)
    _, name = protocol_outputs(protocol, NAME)
    report_path = RESULTS / f"{name}.json"
    report = json.loads(report_path.read_text())
    candidates = best_zoo_rule(protocol["evaluation"])["best_zoo_pool"]
    lines = bound_table(report, candidates)
    md = [
        f"Command: `{command_line()}`",
        "",
        "# Selection bound on the unseen tasks (after the fact; test scores pick, so no method)",
        "",
        f"Report: `{report_path.relative_to(RESULTS.parent.parent)}`, seeds {report['seeds_complete']}; "
        f"zoo candidates: {', '.join(candidates)}. Mean over tasks minus `scratch`, points, paired per seed, "
        "95% t interval, seeds ahead/behind.",
        "",
        f"| shots | best_zoo (the rule's pick) | {ORACLE_ZOO} (better zoo method on test) | "
        f"{ORACLE_SEED} (better of two scratch training seeds on test) | {ORACLE_ZOO} - {ORACLE_SEED} |",
        "|---|---|---|---|---|",
    ]
    md += [f"| {x['shots']} | {fmt(x['best_zoo'])} | {fmt(x[ORACLE_ZOO])} | {fmt(x[ORACLE_SEED])} | {fmt(x['zoo - seed'])} |" for x in lines]
    out = RESULTS / "dev" / f"selection-bound-{name}.md"
    out.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

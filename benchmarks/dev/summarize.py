"""Tables from the development units (``trained.py``) and the cached frozen features (``frozen_probe.py``).

Per (task, shots): each method's mean test accuracy over the development seeds present for
every method compared, and its paired difference against ``scratch`` (points, 95% t
interval, wins/losses). Rows formed without training:

- ``ens(a+b)``: the mean of two trained models' test probabilities (``scratch+scratch@1``
  is the control for any method that combines two trained models);
- ``ridge:REP``: the closed-form ridge head (lambda by exact leave-one-out) on frozen
  features REP of the same shots (no validation images used).

    .venv/bin/python benchmarks/dev/summarize.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import command_line  # noqa: E402
from dev_common import RESULTS_DEV, cached_features, test_digest, fixed_pool, paired_summary, sample_shots_from  # noqa: E402
from frozen_probe import ridge_predict  # noqa: E402
from trained import PROBS, UNITS  # noqa: E402

# The test sets of the units made before units recorded theirs (code at 5c317e8: dev_common.fixed_pool's).
LEGACY_DIGESTS = {"fmnist-footwear-bags": 21559776913.0, "digits8x8": 80551048.0}
ENSEMBLES = [("scratch", "scratch@1"), ("scratch", "zoo_init"), ("scratch", "zoo_residual")]
RIDGE_REPS = ["backbone", "uniform_x4"]


def load_units(tag: str) -> dict:
    """``{(task, shots): {method: {seed: unit}}}`` for the units run with settings ``tag`` ("" = the recipe's)."""
    table: dict = {}
    for path in sorted(UNITS.glob("*.json")):
        unit = json.loads(path.read_text())
        method, _, rest = unit["method"].partition("-")
        if (f"-{rest}" if rest else "") != tag:
            continue
        table.setdefault((unit["task"], unit["shots"]), {}).setdefault(method, {})[unit["seed"]] = unit
    return table


def seed_spread(rows: dict) -> dict | None:
    """``scratch``'s sd from the training seed alone (same split) and from the split alone, in points.

    With two training seeds per split, the training sd is sd(a - b) / sqrt(2); the split sd
    is what remains of the variance of the per-split mean, var(mean) - var_training / 2.
    """
    a, b = rows.get("scratch", {}), rows.get("scratch@1", {})
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 3:
        return None
    diffs = torch.tensor([100 * (a[s] - b[s]) for s in seeds], dtype=torch.float64)
    means = torch.tensor([50 * (a[s] + b[s]) for s in seeds], dtype=torch.float64)
    training_var = float(diffs.var()) / 2
    split_var = max(0.0, float(means.var()) - training_var / 2)
    return {"training": training_var ** 0.5, "split": split_var ** 0.5, "n": len(seeds)}


def test_accuracy(probs: torch.Tensor, targets: torch.Tensor) -> float:
    return float((probs.argmax(1) == targets).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="", help="the settings tag of trained.py's units, e.g. -lr0.003")
    args = parser.parse_args()
    from vimw.io import load_tensors

    table = load_units(args.tag)
    lines = [f"# Trained methods vs scratch (development seeds; fixed test sets; settings {args.tag or 'of the recipe'})", "",
             "Paired differences vs `scratch` in points: mean [95% t interval] wins/losses over the seeds.", ""]
    payload = {}
    pools = {}
    for (task, shots), methods in sorted(table.items()):
        if "scratch" not in methods:
            continue
        if task not in pools:
            pools[task] = fixed_pool(task)
        pool, test = pools[task]
        # Units without a digest were made at 5c317e8 (before the digest); on this test set only if it matches.
        digest = test_digest(test.images)
        methods = {m: {s: u for s, u in by_seed.items() if u.get("test_digest", LEGACY_DIGESTS.get(task)) == digest}
                   for m, by_seed in methods.items()}
        if not methods.get("scratch"):
            continue
        rows = {m: {s: u["test"] for s, u in by_seed.items()} for m, by_seed in methods.items()}
        for a, b in ENSEMBLES:
            if a in methods and b in methods:
                seeds = set(methods[a]) & set(methods[b])
                rows[f"ens({a}+{b})"] = {
                    s: test_accuracy(load_tensors(PROBS / f"{task}-{shots}-{s}-{a}{args.tag}.safetensors")["probs"]
                                     + load_tensors(PROBS / f"{task}-{shots}-{s}-{b}{args.tag}.safetensors")["probs"],
                                     test.targets) for s in seeds}
        for rep in RIDGE_REPS:
            pool_f = cached_features(task, rep, "pool", pool.images)
            test_f = cached_features(task, rep, "test", test.images)
            if pool_f is not None and test_f is not None:
                rows[f"ridge:{rep}"] = {}
                for s in methods["scratch"]:
                    index = sample_shots_from(pool.targets, shots, s)
                    predicted = ridge_predict(pool_f[index], pool.targets[index], test_f, pool.num_classes)
                    rows[f"ridge:{rep}"][s] = float((predicted == test.targets).double().mean())
        base = rows["scratch"]
        lines += [f"## {task}, {shots} shots", "", "| method | seeds | test | vs scratch |", "|---|---|---|---|"]
        for method, by_seed in rows.items():
            seeds = sorted(set(by_seed) & set(base))
            mine = [by_seed[s] for s in seeds]
            mean = sum(mine) / len(mine)
            if method == "scratch" or len(seeds) < 2:
                cell = ""
            else:
                p = paired_summary(mine, [base[s] for s in seeds])
                cell = f"{p['mean']:+.1f} [{p['low']:+.1f}, {p['high']:+.1f}] {p['wins']}/{p['losses']}"
            lines.append(f"| {method} | {len(seeds)} | {mean:.3f} | {cell} |")
        spread = seed_spread(rows)
        if spread:
            lines.append(f"\n`scratch`'s spread (points, sd): training seed {spread['training']:.1f}, "
                         f"split {spread['split']:.1f} (over {spread['n']} splits with two training seeds each)")
        lines.append("")
        payload[f"{task}/{shots}"] = {"rows": rows, "scratch_spread": spread}
    RESULTS_DEV.mkdir(parents=True, exist_ok=True)
    out = f"trained{args.tag}"
    (RESULTS_DEV / f"{out}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS_DEV / f"{out}.md").write_text(f"Command: `{command_line()}`\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Development diagnosis (issue 23, next protocol): does averaging a new module with the zoo's
closed-form head add more than averaging two new modules?

Reads the test probabilities ``trained.py`` kept (``runs/dev/probs``: the evaluation tasks'
*development* seeds 100+, on their leave-overlap-out zoos, with the recipe of those runs, lr
3e-3; ``zoo_ridge`` there is the uniform zoo amplified x4, the library's is x2) and forms, per (task, shots, seed), without training again:

- ``scratch_x2``: ``scratch`` and ``scratch@1`` (the same split, another training seed) averaged;
- ``scratch+zoo_ridge``: ``scratch`` and the zoo's closed-form head averaged (one trained model);
- ``scratch+zoo_ridge`` minus ``scratch_x2``: what the zoo adds beyond model averaging.

Paired per seed against ``scratch``, points, 95% t interval. A lead for a new protocol file,
never a reported result.

    .venv/bin/python benchmarks/dev/ensembles.py     # after trained.py ... --lr 0.003 --methods scratch scratch@1 zoo_ridge
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_common import RESULTS_DEV, ROOT, fixed_pool, paired_summary  # noqa: E402

PROBS = ROOT / "runs" / "dev" / "probs"
TAG = "-lr0.003"
NAME = re.compile(rf"(.+)-(\d+)-(\d+)-(.+){re.escape(TAG)}\.safetensors")
NEEDED = ("scratch", "scratch@1", "zoo_ridge")


def accuracy(probs: torch.Tensor, targets: torch.Tensor) -> float:
    return float((probs.argmax(1) == targets).double().mean())


def main() -> None:
    from vimw.io import load_tensors

    runs: dict[tuple, dict[str, Path]] = defaultdict(dict)
    for path in PROBS.glob(f"*{TAG}.safetensors"):
        found = NAME.fullmatch(path.name)
        if found:
            runs[(found.group(1), int(found.group(2)), int(found.group(3)))][found.group(4)] = path
    targets, scores = {}, defaultdict(lambda: defaultdict(list))
    for (task, shots, seed), paths in sorted(runs.items()):
        if not all(m in paths for m in NEEDED):
            continue
        targets.setdefault(task, fixed_pool(task)[1].targets)
        p = {m: load_tensors(paths[m])["probs"].double() for m in NEEDED}
        for cell in ((task, shots), ("both tasks", shots)):
            s = scores[cell]
            s["scratch"].append(accuracy(p["scratch"], targets[task]))
            s["scratch_x2"].append(accuracy(p["scratch"] + p["scratch@1"], targets[task]))
            s["scratch+zoo_ridge"].append(accuracy(p["scratch"] + p["zoo_ridge"], targets[task]))
            s["zoo_ridge"].append(accuracy(p["zoo_ridge"], targets[task]))
    lines = ["# Averaging a new module with the zoo's closed-form head (development seeds; not a result)", "",
             __doc__.split("\n\n")[1], "", "| task | shots | n | scratch_x2 - scratch | scratch+zoo_ridge - scratch | "
             "scratch+zoo_ridge - scratch_x2 | zoo_ridge - scratch |", "|---|---|---|---|---|---|---|"]

    def cell(a: str, b: str, s) -> str:
        d = paired_summary(s[a], s[b])
        return f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] {d['wins']}/{d['losses']}"

    for (task, shots), s in sorted(scores.items(), key=lambda kv: (kv[0][0] == "both tasks", kv[0])):
        lines.append(f"| {task} | {shots} | {len(s['scratch'])} | {cell('scratch_x2', 'scratch', s)} | "
                     f"{cell('scratch+zoo_ridge', 'scratch', s)} | {cell('scratch+zoo_ridge', 'scratch_x2', s)} | "
                     f"{cell('zoo_ridge', 'scratch', s)} |")
    text = "\n".join(lines) + "\n"
    (RESULTS_DEV / "ensembles.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

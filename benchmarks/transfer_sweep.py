"""How vimw's TransMiter defaults were chosen: K and the alignment set, on validation images.

Runs ``benchmarks/transfer.py`` on seed 0 for each (K, extra unlabeled alignment images)
pair that has no result yet, then tabulates each setting's *validation* scores of the
transferred adapter (protocol a: HM over all classes; protocol b: base-class accuracy), its
cost relative to strong fine-tuning, and, for the record only, its test HM. The choice is
made on validation by the one selection rule (score, ties to the lower loss), never on test.

    python benchmarks/transfer_sweep.py            # results/transfer-sweep/*.json + transfer_sweep.md
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, write_results  # noqa: E402

SETTINGS = ((128, 0), (128, 100), (256, 0), (256, 100), (256, 500), (512, 0), (512, 100))
SWEEP = RESULTS / "transfer-sweep"


def _run(k: int, align: int) -> dict:
    path = SWEEP / f"k{k}_a{align}.json"
    if not path.exists():
        SWEEP.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(Path(__file__).with_name("transfer.py")), "--K", str(k), "--num-align",
                        str(align), "--seeds", "0", "--name", f"transfer-sweep/k{k}_a{align}"], check=True)
        path.with_suffix(".md").unlink(missing_ok=True)  # the table below is the summary
    return json.loads(path.read_text())


def _row(k: int, align: int, result: dict) -> dict:
    seed = result["per_seed"][0]
    row = {"K": k, "num_align": align, "command": result["command"],
           "target_side_ratio": result["plus_over_strong_ft"]["base (target side)"]}
    for protocol in ("all", "base"):
        lam = seed["choices"][protocol]["lambda"]
        chosen = next(c for c in lam["candidates"] if c["lambda"] == lam["chosen"])
        row[protocol] = {"val_score": chosen["score"], "val_loss": chosen["loss"], "lambda": lam["chosen"],
                         "test_hm_transferred": seed["rows"][protocol]["transferred"]["hm"],
                         "test_hm_plus": seed["rows"][protocol]["transmiter_plus"]["hm"]}
    return row


def main() -> int:
    from vimw.evaluation.selection import best_candidate

    rows = [_row(k, a, _run(k, a)) for k, a in SETTINGS]
    picks = {p: best_candidate([{"score": r[p]["val_score"], "loss": r[p]["val_loss"]} for r in rows])
             for p in ("all", "base")}
    lines = ["| K | extra unlabeled alignment images | val (a) HM | val (a) loss | val (b) base acc | val (b) loss | "
             "TransMiter+ / strong FT time (target side) | test HM transferred (a / b) | test HM TransMiter+ (a / b) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for i, r in enumerate(rows):
        mark = lambda p: " *" if picks[p] == i else ""  # noqa: E731
        lines.append(
            f"| {r['K']} | {r['num_align']} | {100 * r['all']['val_score']:.1f}{mark('all')} | {r['all']['val_loss']:.3f} | "
            f"{100 * r['base']['val_score']:.1f}{mark('base')} | {r['base']['val_loss']:.3f} | {r['target_side_ratio']:.3f} | "
            f"{100 * r['all']['test_hm_transferred']:.1f} / {100 * r['base']['test_hm_transferred']:.1f} | "
            f"{100 * r['all']['test_hm_plus']:.1f} / {100 * r['base']['test_hm_plus']:.1f} |")
    md = "\n".join([
        "# TransMiter settings chosen on validation (seed 0)", "",
        "Each row is `benchmarks/transfer.py --K K --num-align A --seeds 0` (the alignment set is always the "
        "training shots' images in 2 views, plus A unlabeled images in 2 views). Validation columns are the "
        "transferred adapter's, at its own chosen lambda; * marks the rule's choice per protocol (higher score, "
        "ties to the lower loss). Test columns are shown for the record and were not used.", "", *lines])
    write_results("transfer_sweep", {"rows": rows, "chosen": {p: rows[i]["K"] for p, i in picks.items()}}, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

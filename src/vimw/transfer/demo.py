"""The demo's transfer step: the weak -> strong story with ``vimw transfer``'s defaults, one seed.

The image counts, views and every training setting are the library's defaults (the ones the
protocol's development part chose), not a smaller copy, so the demo shows what a user gets.
Every choice is made on base-class validation images only (novel labels never seen) and the
strong model is not fine-tuned; the zero-shot logits are cached under the work directory, so
a second demo run repeats only the training.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from vimw.io.names import TRANSFER_CACHE_DIR, TRANSFER_DEMO_RESULTS
from vimw.transfer.protocol import LABELS, ProtocolConfig, run_protocol

STORY = ("weak_zero_shot", "teacher", "strong_zero_shot", "transferred", "transferred_blend", "transmiter_plus",
         "transmiter_plus_blend", "proxy", "ensemble")


def demo_config() -> ProtocolConfig:
    """The demo's run of the protocol: the defaults, base-class validation, no strong fine-tuning."""
    return replace(ProtocolConfig(), protocols=("base",), strong_ft=False, teacher_ablation=False)


def format_demo(result: dict[str, Any]) -> str:
    """The demo's lines: the split, then base / novel / HM of the methods that tell the story."""
    protocol = result["config"]["protocols"][0]
    rows = result["summaries"][protocol]
    choice = result["per_seed"][0]["choices"][protocol]
    lines = [f"  {result['models']['weak']} -> {result['models']['strong']}",
             f"  base: {', '.join(result['split']['base'])}; novel: {', '.join(result['split']['novel'])}",
             f"  {'':48s} {'base':>6s} {'novel':>6s} {'HM':>6s}"]
    for method in STORY:
        if method in rows:
            r = rows[method]
            lines.append(f"  {LABELS[method]:48s} {100 * r['base']:6.1f} {100 * r['novel']:6.1f} {100 * r['hm']:6.1f}")
    where = "base-class validation images" if protocol == "base" else "validation images of all classes"
    lines.append(f"  (chosen on {where}: lambda/image {choice['lambda']['chosen']:g}, refinement epoch "
                 f"{choice['refine']['epoch']}, blend alpha {choice['transferred_alpha']['chosen']:g} / "
                 f"{choice['transmiter_plus_alpha']['chosen']:g}; no test image was used for any choice)")
    return "\n".join(lines)


# The protocol's stages as the demo announces them when each ends (the protocol logs one line per method).
STAGES = {"teacher": "the teacher: the weak model fine-tuned on the base shots",
          "source_adapter": "an adapter extracted from it, without labels",
          "transferred": "the adapter moved to the strong model, no backpropagation",
          "transmiter_plus": "TransMiter+: the moved adapter refined on the base shots"}
_STAGE_LINE = re.compile(r"\[base \] (\S+)\s.*\(([\d.]+) s\)")
_ZERO_SHOT_LINE = re.compile(r"^\s*(weak|strong) zero-shot logits .*: ([\d.]+) s")


def stage_announcer(say: Callable[[str], None]) -> Callable[[str], None]:
    """A protocol ``log`` that tells ``say`` when the zero-shot passes and each of ``STAGES`` end (once
    each), and nothing else."""
    told: set[str] = set()

    def log(message: str) -> None:
        passes = _ZERO_SHOT_LINE.search(message)
        if passes:
            seconds = float(passes.group(2))
            how = "read from the cache" if seconds < 0.5 else f"{seconds:.0f} s, cached for the next run"
            say(f"  the {passes.group(1)} model's zero-shot logits over the image sets ({how})")
            return
        found = _STAGE_LINE.search(message)
        if found and found.group(1) in STAGES and found.group(1) not in told:
            told.add(found.group(1))
            say(f"  {STAGES[found.group(1)]} ({float(found.group(2)):.0f} s)")

    return log


def demo_step(workdir: str | Path, seed: int = 0, say: Callable[[str], None] | None = None
              ) -> tuple[dict[str, Any], str]:
    """Run the demo's transfer step in ``workdir``; write ``transfer_results.json`` / ``.md``
    there and return the result and its text (for the caller to print). ``say`` hears a line
    as each stage ends, so a long step is never silent."""
    from vimw.io import atomic_write_text, write_json

    workdir = Path(workdir)
    log = stage_announcer(say) if say is not None else (lambda m: None)
    result = run_protocol(demo_config(), workdir / TRANSFER_CACHE_DIR, seeds=(seed,), log=log)
    text = format_demo(result)
    atomic_write_text(workdir / f"{TRANSFER_DEMO_RESULTS}.md", text + "\n")
    write_json(workdir / f"{TRANSFER_DEMO_RESULTS}.json", result)
    return result, text


__all__ = ["demo_config", "demo_step", "format_demo", "stage_announcer"]

"""The ViM chain from the command line on any backbone, shared by the HF backbone tests.

``vimw zoo train`` (one module per synthetic npz task) -> ``vimw aggregate`` (few-shot,
per-site gates, on an image folder) -> ``vimw evaluate`` -> ``vimw predict``. Sized for
tiny random HF models: 1 epoch of midstream training, 2 shots, 2 epochs of gates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from conftest import write_image_folder, write_npz

from vimw.cli.main import main

TRAIN = ["--epochs", "1", "--batch-size", "16", "--lr", "0.01", "--no-progress"]


def run(capsys, *argv) -> tuple[int, str, str]:
    """``vimw ARGV`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@dataclass
class ChainResult:
    zoo_dir: Path
    model_dir: Path
    folder: Path
    metrics: dict
    predict_lines: list[str]
    image: Path


def zoo_aggregate_evaluate(
    tmp_path: Path,
    capsys,
    backbone: str,
    *,
    image_size: int = 32,
    modules: tuple[str, ...] = ("bands", "dots"),
    kind: str | None = None,
    images: int = 48,
) -> ChainResult:
    """Run the chain on ``backbone`` and check every step succeeds; returns what it wrote."""
    zoo_dir, model_dir = tmp_path / "zoo", tmp_path / "model"
    extra = ["--kind", kind] if kind else []
    for pattern in modules:
        npz = write_npz(tmp_path / f"{pattern}.npz", n=images, pattern=pattern)
        code, out, err = run(capsys, "zoo", "train", "--zoo", zoo_dir, "--task", f"npz:{npz}", "--name", pattern,
                             "--backbone", backbone, "--image-size", image_size, *extra, *TRAIN)
        assert code == 0, err
        assert out.startswith(f"added {pattern} (")

    folder = write_image_folder(tmp_path / "photos", per_class=6, classes=3)
    code, out, err = run(capsys, "aggregate", "--zoo", zoo_dir, "--task", f"folder:{folder}", "--shots", 2,
                         "--method", "ens", "--out", model_dir, "--epochs", 2, "--no-progress")
    assert code == 0, err
    assert out.splitlines()[-1].startswith("ens on folder:")  # the result line, after any progress lines

    code, out, err = run(capsys, "evaluate", "--model", model_dir, "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert 0.0 <= metrics["accuracy"] <= 1.0

    image = min((Path(folder) / "kind1").glob("*.png"))
    code, out, err = run(capsys, "predict", "--model", model_dir, image)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == str(image) and len(lines) == 4
    assert {line.split()[-1] for line in lines[1:]} == {"kind0", "kind1", "kind2"}
    return ChainResult(zoo_dir, model_dir, Path(folder), metrics, lines, image)

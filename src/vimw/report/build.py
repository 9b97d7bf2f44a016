"""``build_report``: one static HTML page (no external resources) with its PNGs beside it.

::

    OUT/index.html
    OUT/images/*.png     plots made here and copies of the models' gate heatmaps
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vimw.errors import VimwError
from vimw.io import atomic_write_text
from vimw.io.names import DOWNSTREAM_RESULTS_FILE, GATES_PLOT_FILE, MANIFEST_FILE, TRANSFER_RESULTS_FILE
from vimw.io.names import REPORT_IMAGES_DIR as IMAGES
from vimw.io.names import REPORT_PAGE_FILE as PAGE
from vimw.io.names import TRAINING_LOG_FILE as LOG_NAME
from vimw.report import plots
from vimw.version import __version__

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1150px;
color:#1d2330;padding:0 16px}
h1{margin-bottom:4px} h2{border-bottom:2px solid #dde3ee;padding-bottom:4px;margin-top:36px}
.meta{color:#667;font-size:13px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #d5dbe6;padding:4px 8px;text-align:left} th{background:#eef2f8}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:8px 12px 16px 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #e3e7ee}
figcaption{font-size:12px;color:#556}
.empty{color:#889;font-style:italic}
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def rounded(value: float) -> str:
    """A float as people read it: 3 decimals below 1 (scores), fewer as it grows (114.3 s -> 114)."""
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    size = abs(value)
    if 0 < size < 0.01:
        return f"{value:.2g}"
    decimals = 3 if size < 1 else 2 if size < 10 else 1 if size < 100 else 0
    return f"{value:,.{decimals}f}"


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _esc(value if value is not None else "-")
    if isinstance(value, float):
        return rounded(value)
    if isinstance(value, int):
        return f"{value:,}"
    return _esc(value)


def _table(table_id: str, headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{_num(c)}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
            else f"<td>{_esc(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _figure(src: str, caption: str, width: int | None = None) -> str:
    style = f' style="width:{width}px"' if width else ""
    return (f'<figure><img src="{_esc(src)}" alt="{_esc(caption)}"{style}>'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:80] or "x"


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines log; unreadable lines are skipped (a run may still be writing)."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def module_count(manifest: dict) -> int:
    """How many zoo modules a downstream model was built from: those it gates over, or those
    it started from (``zoo_init`` averages the zoo into one module: ``init.zoo_modules``)."""
    modules = (manifest.get("zoo") or {}).get("modules") or (manifest.get("init") or {}).get("zoo_modules")
    return len(modules or [])


class _Report:
    def __init__(self, out: Path, staging: Path) -> None:
        self.out = out
        self.images = staging  # becomes OUT/images when the page is written
        self.sections: list[str] = []
        self.sources: list[str] = []

    def image(self, name: str) -> tuple[Path, str]:
        """(file to write, relative src) for an image called ``name``."""
        return self.images / name, f"{IMAGES}/{name}"

    # -- zoo -------------------------------------------------------------------------------
    def zoo(self, root: Path) -> None:
        from vimw.zoo import Zoo

        zoo = Zoo(root)
        rows, curves = [], {}
        for name, entry in zoo.list():
            manifest = zoo.manifest(name)
            metrics, training = manifest.metrics, manifest.training
            tests = ", ".join(f"{k[5:]} {rounded(v)}" for k, v in metrics.items()
                              if k.startswith("test_") and k != "test_score" and isinstance(v, float))
            rows.append([name, manifest.kind, manifest.task.get("name"), manifest.backbone.get("arch"),
                         manifest.backbone.get("image_size"), manifest.num_parameters, metrics.get("val_score"),
                         tests or "-", training.get("epochs"), training.get("seconds")])
            log_file = zoo.module_dir(name) / LOG_NAME
            records = read_jsonl(log_file) if log_file.is_file() else list(training.get("history") or [])
            if records:
                curves[name] = records
        self.sources.append(f"zoo {root}")
        parts = [f"<h2>Zoo <small class=\"meta\">{_esc(root)}</small></h2>"]
        if rows:
            parts.append(_table("zoo-table", ["module", "kind", "task", "backbone", "px", "parameters", "val",
                                              "test", "epochs", "seconds"], rows))
        else:
            parts.append('<p class="empty">the zoo is empty</p>')
        if curves:
            path, src = self.image("zoo-training-curves.png")
            plots.training_curves(curves, path, title="midstream training (per epoch)")
            parts.append(_figure(src, "training curves of the zoo's modules (log.jsonl or the manifest's history)"))
        self.sections.append("\n".join(parts))

    # -- downstream models -----------------------------------------------------------------
    def models(self, directories: list[Path]) -> None:
        from vimw.aggregation.store import read_manifest

        rows, figures, curves = [], [], {}
        for i, directory in enumerate(directories):
            manifest = read_manifest(directory)
            task = manifest.get("task") or {}
            metrics = manifest.get("metrics") or {}
            rows.append([directory.name, manifest.get("method"), task.get("name"), task.get("shots"),
                         manifest["backbone"].get("arch"), module_count(manifest),
                         metrics.get("val_score", metrics.get("val")),
                         metrics.get("test_score", metrics.get("test")),
                         (manifest.get("training") or {}).get("trainable", metrics.get("trainable"))])
            gates = directory / GATES_PLOT_FILE
            if gates.is_file():
                path, src = self.image(f"model{i}-{_slug(directory.name)}-gates.png")
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(gates, path)
                figures.append(_figure(src, f"{directory.name}: {manifest.get('method')} gates on {task.get('name')}",
                                       width=520))
            log_file = directory / LOG_NAME
            if log_file.is_file():
                curves[directory.name] = read_jsonl(log_file)
            self.sources.append(f"model {directory}")
        parts = ["<h2>Downstream models</h2>",
                 _table("models-table", ["model", "method", "task", "shots", "backbone", "modules", "val", "test",
                                         "trainable"], rows)]
        parts.append("<h3>Gate heatmaps (sites x zoo modules)</h3>")
        parts.extend(figures or ['<p class="empty">no gate heatmaps (models without a zoo aggregation)</p>'])
        if curves:
            path, src = self.image("models-training-curves.png")
            plots.training_curves(curves, path, title="downstream training (per epoch)")
            parts.append(_figure(src, "training curves of the downstream models"))
        self.sections.append("\n".join(parts))

    # -- benchmark results -----------------------------------------------------------------
    def downstream_results(self, path: Path) -> None:
        data = json.loads(path.read_text(encoding="utf-8"))
        summary = [r for r in data.get("summary") or [] if isinstance(r, dict)]
        if not summary:
            return
        self.sources.append(f"results {path}")
        parts = ["<h2>Accuracy against shots <small class=\"meta\">benchmarks: downstream.json</small></h2>"]
        for task in sorted({r.get("task") for r in summary if r.get("task")}):
            image, src = self.image(f"shots-{_slug(task)}.png")
            plots.accuracy_vs_shots(summary, task, image)
            parts.append(_figure(src, f"{task}: test accuracy (mean +- std over seeds) per method", width=540))
        rows = [[r.get("task"), r.get("shots"), r.get("method"), r.get("seeds"), r.get("test_mean"),
                 r.get("test_std"), r.get("trainable"), r.get("seconds_mean")] for r in summary]
        parts.append(_table("downstream-table", ["task", "shots", "method", "seeds", "test mean", "test std",
                                                 "trainable", "seconds"], rows))
        self.sections.append("\n".join(parts))

    def transfer_results(self, path: Path) -> None:
        data = json.loads(path.read_text(encoding="utf-8"))
        summary = {k: v for k, v in (data.get("summary") or {}).items()
                   if isinstance(v, dict) and any(m in v for m in ("base", "novel", "hm"))}
        if not summary:
            return
        self.sources.append(f"results {path}")
        image, src = self.image("transfer-bars.png")
        plots.transfer_bars(summary, image)
        config = data.get("config") or {}
        caption = (f"{config.get('weak', 'weak')} -> {config.get('strong', 'strong')} on {config.get('task', '?')}, "
                   f"{len(data.get('seeds') or [])} seed(s)")
        rows = [[name, s.get("base"), s.get("novel"), s.get("hm"), s.get("hm_std"), s.get("seconds")]
                for name, s in summary.items()]
        self.sections.append("\n".join([
            "<h2>TransMiter <small class=\"meta\">benchmarks: transfer.json</small></h2>",
            _figure(src, caption, width=760),
            _table("transfer-table", ["model", "base", "novel", "HM", "HM std", "seconds"], rows),
        ]))

    def logs(self, files: list[Path]) -> None:
        runs = {f.parent.name + "/" + f.stem if f.stem == "log" else f.stem: read_jsonl(f) for f in files}
        runs = {k: v for k, v in runs.items() if v}
        if not runs:
            return
        image, src = self.image("logs-training-curves.png")
        plots.training_curves(runs, image, title="training logs")
        self.sources.extend(f"log {f}" for f in files)
        self.sections.append("<h2>Training logs</h2>\n" + _figure(src, "JSON-lines training logs"))

    def write(self) -> Path:
        """The page and its images in place of an earlier report's; a report with nothing in it is refused."""
        if not self.sections:
            raise VimwError(f"nothing to report: no results or log records in {'; '.join(self.sources)}")
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        sources = "".join(f"<li>{_esc(s)}</li>" for s in self.sources)
        body = "\n".join(self.sections)
        page = (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>vimw report</title><style>{CSS}</style></head><body>\n"
            f"<h1>vimw report</h1><p class=\"meta\">vimw {_esc(__version__)}, {stamp}</p>"
            f"<ul class=\"meta\">{sources}</ul>\n{body}\n</body></html>\n"
        )
        images = self.out / IMAGES
        if images.is_dir():  # images of an earlier report would linger unreferenced
            shutil.rmtree(images)
        self.images.rename(images)
        path = self.out / PAGE
        atomic_write_text(path, page)
        return path


def build_report(
    out: str | os.PathLike,
    *,
    zoo: str | os.PathLike | None = None,
    models: list[str | os.PathLike] | tuple = (),
    results: str | os.PathLike | None = None,
    logs: list[str | os.PathLike] | tuple = (),
) -> Path:
    """Write ``OUT/index.html`` and its images; returns the page's path.

    ``results`` is a folder holding ``downstream.json`` and/or ``transfer.json`` (the
    benchmarks' output); each part is shown only when its input is there. Every input is
    checked before anything is written, and an earlier report in ``out`` is replaced only
    once the new one is complete; a report with nothing to show is refused.
    """
    out, model_dirs, log_files = Path(out), [Path(m) for m in models], [Path(f) for f in logs]
    results = Path(results) if results is not None else None
    _check_inputs(out, None if zoo is None else Path(zoo), model_dirs, results, log_files)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{IMAGES}-", dir=out))
    try:
        report = _Report(out, staging)
        if zoo is not None:
            report.zoo(Path(zoo))
        if model_dirs:
            report.models(model_dirs)
        if results is not None:
            for name, add in ((DOWNSTREAM_RESULTS_FILE, report.downstream_results),
                              (TRANSFER_RESULTS_FILE, report.transfer_results)):
                if (results / name).is_file():
                    add(results / name)
                else:
                    report.sources.append(f"results {results} (no {name})")
        if log_files:
            report.logs(log_files)
        return report.write()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_inputs(out: Path, zoo: Path | None, models: list[Path], results: Path | None, logs: list[Path]) -> None:
    """Refuse a report with no input, an output that is a file, and inputs that are not there."""
    if zoo is None and not models and results is None and not logs:
        raise VimwError("nothing to report: give --zoo, --models, --results or --logs")
    if out.exists() and not out.is_dir():
        raise VimwError(f"--out {out} is a file; a report is a directory ({PAGE} and {IMAGES}/)")
    if zoo is not None and not zoo.is_dir():
        raise VimwError(f"{zoo} is a file; a zoo is a directory" if zoo.exists()
                        else f"no zoo at {zoo}: the directory does not exist")
    for directory in models:
        if not (directory / MANIFEST_FILE).is_file():
            raise VimwError(f"{directory} is not a downstream model directory (no {MANIFEST_FILE})")
    if results is not None and not results.is_dir():
        raise VimwError(f"no results folder at {results}")
    for f in logs:
        if not f.is_file():
            raise VimwError(f"no log file at {f}")

"""``vimw report``: a static page whose images all load in headless Chromium and whose tables are filled."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import write_image_folder
from vimw.cli.main import main
from vimw.report import plots
from vimw.report.browser import broken_images, check_page, find_chromium, screenshot
from vimw.report.build import rounded

pytest.importorskip("matplotlib")


def _results(root: Path) -> Path:
    """A small downstream.json + transfer.json in the benchmarks' format."""
    root.mkdir(parents=True)
    summary = [{"task": task, "shots": shots, "method": method, "seeds": 2, "test_mean": 0.5 + 0.01 * shots + bonus,
                "test_std": 0.01, "trainable": 1000, "seconds_mean": 1.0}
               for task in ("digits8x8", "fmnist") for shots in (5, 10, 20)
               for method, bonus in (("linear_probe", 0.0), ("ens", 0.05))]
    (root / "downstream.json").write_text(json.dumps({"rows": [], "summary": summary}))
    transfer = {name: {"base": b, "novel": n, "hm": 2 * b * n / (b + n), "hm_std": 0.01, "seconds": 1.0}
                for name, b, n in (("weak_zero_shot", 0.3, 0.2), ("transferred", 0.7, 0.5), ("transmiter_plus", 0.8, 0.5))}
    (root / "transfer.json").write_text(json.dumps({"config": {"weak": "w", "strong": "s", "task": "fmnist"},
                                                    "seeds": [0], "summary": transfer}))
    return root


@pytest.fixture(scope="module")
def report_inputs(tiny_zoo, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report-inputs")
    folder = write_image_folder(root / "photos", per_class=6)
    model = root / "model"
    # ens explicitly: the report shows a gated model's gates (the default method, auto, may pick a baseline)
    assert main(["aggregate", "--zoo", str(tiny_zoo.root), "--task", f"folder:{folder}", "--shots", "2",
                 "--method", "ens", "--out", str(model), "--epochs", "1", "--no-progress"]) == 0
    log = root / "run" / "log.jsonl"
    log.parent.mkdir()
    log.write_text("".join(json.dumps({"epoch": e, "train_loss": 1.0 / e, "val_score": 0.5 + 0.1 * e}) + "\n"
                           for e in (1, 2, 3)) + "not json\n")
    return {"zoo": tiny_zoo.root, "model": model, "results": _results(root / "results"), "log": log}


def test_report_writes_a_self_contained_page(report_inputs, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["report", "--out", str(out), "--zoo", str(report_inputs["zoo"]), "--models", str(report_inputs["model"]),
                 "--results", str(report_inputs["results"]), "--logs", str(report_inputs["log"])])
    assert code == 0 and "index.html" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page  # nothing external
    images = sorted(p.name for p in (out / "images").iterdir())
    assert images == ["logs-training-curves.png", "model0-model-gates.png", "shots-digits8x8.png", "shots-fmnist.png",
                      "transfer-bars.png", "zoo-training-curves.png"]
    for name in images:
        assert f'src="images/{name}"' in page
    for module in ("syn-bands", "syn-blocks", "syn-dots"):
        assert module in page


def test_report_refuses_missing_inputs(tmp_path, capsys):
    code = main(["report", "--out", str(tmp_path / "r"), "--zoo", str(tmp_path / "nope")])
    assert code == 2 and "no zoo at" in capsys.readouterr().err
    code = main(["report", "--out", str(tmp_path / "r"), "--models", str(tmp_path)])
    assert code == 2 and "not a downstream model directory" in capsys.readouterr().err


@pytest.mark.skipif(find_chromium() is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_in_headless_chromium_loads_every_image_and_fills_the_tables(report_inputs, tmp_path):
    out = tmp_path / "report"
    shot = tmp_path / "report.png"
    assert main(["report", "--out", str(out), "--zoo", str(report_inputs["zoo"]), "--models", str(report_inputs["model"]),
                 "--results", str(report_inputs["results"]), "--logs", str(report_inputs["log"]),
                 "--screenshot", str(shot)]) == 0
    check = check_page(out / "index.html")
    assert len(check["images"]) == 6 and broken_images(check) == []
    assert all(image["width"] > 100 and image["height"] > 100 for image in check["images"])
    tables = {t["id"]: t for t in check["tables"]}
    assert set(tables) == {"zoo-table", "models-table", "downstream-table", "transfer-table"}
    assert tables["zoo-table"]["rows"] == 3 and tables["models-table"]["rows"] == 1
    assert tables["downstream-table"]["rows"] == 12 and tables["transfer-table"]["rows"] == 3
    assert all(t["filled_cells"] >= t["rows"] * 6 for t in tables.values())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert not list(out.glob(".vimw-check-*"))  # the check's copy of the page is gone


@pytest.mark.skipif(find_chromium() is None, reason="headless Chromium is not installed")
def test_a_missing_image_is_reported_broken(tmp_path):
    page = tmp_path / "index.html"
    shutil.copyfile(Path(__file__), tmp_path / "not-a-png.png")
    page.write_text('<!DOCTYPE html><html><body><img src="missing.png"><img src="not-a-png.png"></body></html>')
    assert sorted(broken_images(check_page(page))) == ["missing.png", "not-a-png.png"]
    screenshot(page, tmp_path / "s.png", width=400, height=300)
    assert (tmp_path / "s.png").stat().st_size > 0


# -- what the page shows, and what it refuses ------------------------------------------------------
def test_benchmark_charts_appear_only_with_results(report_inputs, tmp_path, monkeypatch, capsys):
    # run inside a folder that has benchmarks/results, as inside the repository
    shutil.copytree(report_inputs["results"], tmp_path / "benchmarks" / "results")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--out", "r", "--zoo", str(report_inputs["zoo"])]) == 0
    assert sorted(p.name for p in (tmp_path / "r" / "images").iterdir()) == ["zoo-training-curves.png"]
    assert "downstream.json" not in (tmp_path / "r" / "index.html").read_text()


def _row(page: str, table_id: str, first_cell: str) -> list[str]:
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S).group(1)
    for row in re.findall(r"<tr>(.*?)</tr>", table, re.S):
        cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in {table_id}")


def test_a_zoo_init_model_shows_the_modules_it_was_built_from(report_inputs, tmp_path):
    folder = write_image_folder(tmp_path / "photos", per_class=6)
    model = tmp_path / "init"
    assert main(["aggregate", "--zoo", str(report_inputs["zoo"]), "--task", f"folder:{folder}", "--shots", "2",
                 "--method", "zoo_init", "--out", str(model), "--epochs", "1", "--no-progress"]) == 0
    recorded = json.loads((model / "manifest.json").read_text())
    assert "zoo" not in recorded and len(recorded["init"]["zoo_modules"]) == 3  # what the count is read from
    assert main(["report", "--out", str(tmp_path / "r"), "--models", str(model), str(report_inputs["model"])]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    headers = re.findall(r"<th>(.*?)</th>", re.search(r'<table id="models-table">.*?</thead>', page, re.S).group(0))
    column = headers.index("modules")
    assert _row(page, "models-table", "init")[column] == "3"
    assert _row(page, "models-table", "model")[column] == "3"


@pytest.mark.parametrize("value, shown", [(114.3, "114"), (1234.56, "1,235"), (12.345, "12.3"), (2.5, "2.50"),
                                          (0.95, "0.950"), (0.0123, "0.012"), (0.004321, "0.0043"), (0.0, "0.000"),
                                          (-0.25, "-0.250")])
def test_numbers_are_rounded_for_people(value, shown):
    assert rounded(value) == shown


def test_the_page_shows_no_machine_precision(report_inputs, tmp_path):
    out = tmp_path / "r"
    assert main(["report", "--out", str(out), "--zoo", str(report_inputs["zoo"]), "--models",
                 str(report_inputs["model"]), "--results", str(report_inputs["results"])]) == 0
    cells = re.findall(r'<td class="num">(.*?)</td>', (out / "index.html").read_text())
    assert cells and not [c for c in cells if re.search(r"\.\d{4,}", c)]


def test_legends_hide_no_data(report_inputs, tmp_path, monkeypatch):
    saved = []
    original = plots._save

    def measuring_save(fig, path):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:
                box = legend.get_window_extent(renderer)
                saved.append((Path(path).name, [box.overlaps(other.get_window_extent(renderer)) for other in fig.axes]))
        original(fig, path)

    monkeypatch.setattr(plots, "_save", measuring_save)
    assert main(["report", "--out", str(tmp_path / "r"), "--zoo", str(report_inputs["zoo"]), "--results",
                 str(report_inputs["results"]), "--logs", str(report_inputs["log"])]) == 0
    charts = {name for name, _ in saved}
    assert charts == {"zoo-training-curves.png", "shots-digits8x8.png", "shots-fmnist.png", "transfer-bars.png",
                      "logs-training-curves.png"}
    assert all(not any(overlaps) for _, overlaps in saved)


def test_an_empty_report_is_refused_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["report", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("vimw: error: nothing to report") and len(err.splitlines()) == 1
    (tmp_path / "results").mkdir()
    assert main(["report", "--out", str(out), "--results", str(tmp_path / "results")]) == 2
    assert "no results or log records" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_a_failed_report_keeps_the_earlier_one(report_inputs, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["report", "--out", str(out), "--zoo", str(report_inputs["zoo"])]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert main(["report", "--out", str(out), "--models", str(tmp_path / "missing")]) == 2
    assert main(["report", "--out", str(out), "--results", str(tmp_path)]) == 2  # nothing to show
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_a_file_as_out_is_refused(tmp_path, capsys, report_inputs):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert main(["report", "--out", str(target), "--zoo", str(report_inputs["zoo"])]) == 2
    assert "notes.txt is a file" in capsys.readouterr().err and target.read_text() == "keep me"

"""Headless Chromium (Debian packages ``chromium``, ``chromium-driver``): screenshots and page checks.

Chromium runs with no sandbox, no GPU and no background networking, in a throw-away
profile; the page is a local file and loads nothing from outside.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from vimw.errors import VimwError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--mute-audio")

# Appended to a copy of the page: on load, writes what every image and table holds into the DOM.
CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.map.call(document.images, function (i) {
    return {src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight};
  });
  var tables = Array.prototype.map.call(document.querySelectorAll('table'), function (t) {
    var cells = Array.prototype.filter.call(t.querySelectorAll('tbody td'), function (c) {
      return c.textContent.trim() !== '';
    }).length;
    return {id: t.id, rows: t.tBodies.length ? t.tBodies[0].rows.length : 0, filled_cells: cells};
  });
  var out = document.createElement('pre');
  out.id = 'vimw-check';
  out.textContent = 'VIMW-' + 'CHECK' + JSON.stringify({images: images, tables: tables}) + 'END-' + 'VIMW-CHECK';
  document.body.appendChild(out);
});
</script>"""


def find_chromium() -> str | None:
    """The Chromium executable, or ``None`` when none is installed."""
    override = os.environ.get("VIMW_CHROMIUM")
    if override:
        return override if shutil.which(override) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    chromium = find_chromium()
    if chromium is None:
        raise VimwError("headless Chromium is not installed (Debian: apt-get install chromium chromium-driver)")
    with tempfile.TemporaryDirectory(prefix="vimw-chromium-") as profile:
        command = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                                  env={**os.environ, "HOME": profile})
        except subprocess.TimeoutExpired as exc:
            raise VimwError(f"headless Chromium did not finish within {timeout:.0f} s") from exc


def screenshot(page: str | os.PathLike, png: str | os.PathLike, *, width: int = 1200, height: int = 2000,
               timeout: float = 25.0) -> Path:
    """Render ``page`` (a local HTML file) and save a PNG of the window."""
    page, png = Path(page).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists():
        png.unlink()
    result = _run([f"--screenshot={png}", f"--window-size={width},{height}", "--virtual-time-budget=5000",
                   page.as_uri()], timeout)
    if not png.is_file() or png.stat().st_size == 0:
        raise VimwError(f"Chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-500:]}")
    return png


def check_page(page: str | os.PathLike, *, timeout: float = 25.0) -> dict:
    """Load ``page`` in headless Chromium; every image's natural size and every table's rows.

    Returns ``{"images": [{"src", "complete", "width", "height"}], "tables": [{"id", "rows",
    "filled_cells"}]}``. The page itself is not changed: a copy with a small check script
    is loaded from the same folder (so relative image paths resolve) and removed after.
    """
    page = Path(page).resolve()
    text = page.read_text(encoding="utf-8")
    text = text.replace("</body>", CHECK_SCRIPT + "</body>") if "</body>" in text else text + CHECK_SCRIPT
    handle, name = tempfile.mkstemp(prefix=".vimw-check-", suffix=".html", dir=page.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
        result = _run(["--dump-dom", "--virtual-time-budget=5000", Path(name).as_uri()], timeout)
    finally:
        os.unlink(name)
    match = re.search(r"VIMW-CHECK(\{.*?\})END-VIMW-CHECK", result.stdout, re.S)
    if not match:
        raise VimwError(f"Chromium returned no page check (exit {result.returncode}): {result.stderr[-500:]}")
    return json.loads(html.unescape(match.group(1)))


def broken_images(check: dict) -> list[str]:
    """The ``src`` of every image that did not load (a check from ``check_page``)."""
    return [i["src"] for i in check["images"] if not i.get("complete") or not i.get("width")]

"""The HTML report in a real browser: headless Chromium runs its scripts without errors,
renders its tables and charts, and paints a page that is not blank.

Skipped where no Chromium is installed, except on CI (the environment variable ``CI`` is
set), which installs it: there a missing browser is a failure, not a silent skip.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_report import HOSTILE, make_report_data

from ktt_core.report import write_report


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-headless-shell") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed, but CI must run the browser test (apt-get install chromium)")
        pytest.skip("Chromium is not installed")
    return found


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with a throw-away profile, as root in a container needs it."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000", *args]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"chromium exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    chromium()  # skip (or fail on CI) before rendering anything
    return write_report(tmp_path_factory.mktemp("report") / "report.html", make_report_data())


def test_scripts_run_without_errors_and_the_dom_is_complete(report, tmp_path):
    dom = run_chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-ready="1"' in body, "the main script did not finish"
    assert 'data-errors="0"' in body, f"script errors on the page: {body}"
    for table_id in ("levels-table", "classes-table", "errors-table", "calibration-table", "thresholds-table",
                     "training-table", "confusions-level-1"):
        assert f'id="{table_id}"' in dom
    assert dom.count("<svg") >= 6  # peers, three reliability diagrams, sweep, training
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and HOSTILE not in dom
    assert len(re.findall(r"<script", dom)) == 2


# Clicks and typing, done by a script added to a copy of the page (the report has no hooks
# for tests): the results go into <body data-...> for --dump-dom to show.
PROBE = """<script>
var t=document.getElementById('classes-table'), th=t.tHead.rows[0].cells, f1=5;
var column=function(i){return Array.prototype.map.call(t.tBodies[0].rows,function(r){return r.cells[i].textContent})};
th[f1].click(); document.body.dataset.up=JSON.stringify(column(f1));
document.body.dataset.upArrow=th[f1].getAttribute('aria-sort');
th[f1].click(); document.body.dataset.down=JSON.stringify(column(f1));
th[1].click(); document.body.dataset.names=JSON.stringify(column(1));
var box=document.getElementById('class-filter'); box.value='fruit';
box.dispatchEvent(new Event('input'));
document.body.dataset.shown=Array.prototype.filter.call(t.tBodies[0].rows,function(r){return !r.hidden}).length;
document.body.dataset.count=document.getElementById('class-filter-count').textContent;
</script></body>"""


def test_sorting_and_filtering_work(report, tmp_path):
    import html
    import json

    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
    dom = run_chromium(tmp_path, "--dump-dom", probed.as_uri()).stdout
    body = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', re.search(r"<body[^>]*>", dom).group(0)))
    up, down, names = (json.loads(html.unescape(body[k])) for k in ("up", "down", "names"))
    assert [float(v) for v in up] == sorted(float(v) for v in up)  # numeric, not text, order
    assert [float(v) for v in down] == sorted((float(v) for v in up), reverse=True)
    assert body["up-arrow"] == "ascending"
    assert names == sorted(names, key=str.lower)
    assert body["shown"] == "3" and body["count"] == "3 of 16 rows"  # Fruit, Apple, Pear
    assert body["errors"] == "0"


def test_screenshot_is_a_painted_page(report, tmp_path):
    shot = tmp_path / "report.png"
    run_chromium(tmp_path, f"--screenshot={shot}", report.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        pixels = np.asarray(image.convert("RGB"), dtype=float)
    assert pixels.var() > 100  # text, tables and charts, not one colour
    assert len(np.unique(pixels.reshape(-1, 3)[::97], axis=0)) > 20  # charts bring many colours

"""The explorer and the report, rendered by a real Chromium (Debian's, driven by Playwright).

The explorer notebook is served by Voila on a finished small run (fixture
``small_run``); the test changes the layer, toggles random weights and checks
that the label names the new selection and that the rendered image's pixels
change. Then ``report.html`` of the same run is opened: every ``<img>`` has
decoded and the first section is "Key findings" with numbers in it. Both pages
are saved as screenshots into ``<run>/screenshots/``, named with the command
that made them (``$SHOT_COMMAND``, set by the Makefile).

``make test`` / ``make test-browser`` install Chromium (``apt-get install -y
chromium``) when ``/usr/bin/chromium`` is absent; Playwright is pointed at it
with ``executable_path`` (``playwright install`` downloads a browser and fails
offline). Without Chromium or Playwright the module is skipped, saying why.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.paths import REPO_ROOT

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SYNC_API = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install -e '.[explore]')")
pytest.importorskip("voila", reason="needs Voila (pip install -e '.[explore]')")
if not CHROMIUM.is_file():
    pytest.skip(f"needs Chromium at {CHROMIUM} (make test-browser installs it)", allow_module_level=True)


def _shot(run: Path, what: str) -> Path:
    command = os.environ.get("SHOT_COMMAND", "pytest tests/test_browser.py")
    folder = run / "screenshots"
    folder.mkdir(exist_ok=True)
    return folder / f"{what}__{re.sub(r'[^A-Za-z0-9.-]+', '_', command)}.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    with SYNC_API.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def voila(small_run, tmp_path_factory):
    """Start Voila on notebooks/explore.ipynb for ``small_run`` (127.0.0.1, a free port); yields ``wait_url()``.

    The server boots while Chromium launches; ``wait_url()`` returns the URL once it listens.
    """
    port = _free_port()
    log = tmp_path_factory.mktemp("voila") / "voila.log"
    env = dict(os.environ, EXPLORE_RUN=str(small_run))  # MPLBACKEND=Agg stays: the explorer must not need inline
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voila", str(REPO_ROOT / "notebooks" / "explore.ipynb"), "--no-browser",
             f"--port={port}", "--Voila.ip=127.0.0.1"],
            cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
        )

    def wait_url() -> str:
        deadline = time.monotonic() + 90
        while True:  # wait until it listens; the page itself renders progressively
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                return f"http://127.0.0.1:{port}/"
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Voila did not start; log:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.2)

    try:
        yield wait_url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _pixels(page) -> str:
    return hashlib.sha256(page.locator(".explore-view img").screenshot()).hexdigest()


def _after_change(page, old_src: str, old_label: str) -> tuple[str, str]:
    """Wait until both the label and the image have been redrawn; return the new (src, label)."""
    page.wait_for_function(
        """([src, label]) => {
            const img = document.querySelector('.explore-view img');
            const lab = document.querySelector('.explore-label');
            return img && lab && img.complete && img.naturalWidth > 0 && img.src !== src && lab.innerText !== label;
        }""",
        arg=[old_src, old_label], timeout=120_000,
    )
    return page.locator(".explore-view img").get_attribute("src"), page.locator(".explore-label").inner_text()


def test_explorer_redraws_in_chromium(voila, browser, small_run):
    from helpers.explore import load_run

    layers = load_run(small_run).layers
    page = browser.new_page(viewport={"width": 1300, "height": 1800})
    page.set_default_timeout(120_000)  # only reached on failure; a loaded 2-core machine is slow
    page.goto(voila(), timeout=120_000)
    page.locator(".explore-view img").wait_for(timeout=240_000)  # kernel start + notebook run
    page.wait_for_function("document.querySelector('.explore-view img').naturalWidth > 0")
    src, label = page.locator(".explore-view img").get_attribute("src"), page.locator(".explore-label").inner_text()
    assert layers[0] in label and "model weights" in label
    before = _pixels(page)
    lesions_src = page.locator(".explore-lesions img").get_attribute("src")

    page.locator(".explore-layer select").select_option(layers[3])
    src, label = _after_change(page, src, label)
    assert layers[3] in label and layers[0] not in label
    after_layer = _pixels(page)
    assert after_layer != before

    page.locator(".explore-random input[type=checkbox]").check()
    src, label = _after_change(page, src, label)
    assert "random weights" in label and layers[3] in label
    assert _pixels(page) not in (before, after_layer)
    page.wait_for_function(  # the lesion curves follow the weights toggle
        "src => { const i = document.querySelector('.explore-lesions img');"
        " return i && i.src !== src && i.complete && i.naturalWidth > 0; }", arg=lesions_src, timeout=120_000)
    assert page.locator(".explore-lesions img").count() == 1
    page.screenshot(path=str(_shot(small_run, "explorer")), full_page=True)
    page.close()


def test_report_renders_in_chromium(browser, small_run):
    from helpers.report import build_report

    report = build_report(small_run)
    page = browser.new_page(viewport={"width": 1300, "height": 1600})
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    n_img, n_decoded = page.evaluate(
        "() => [document.images.length, Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length]"
    )
    assert n_img > 0 and n_decoded == n_img
    first = page.locator("h2").first
    assert first.inner_text().strip() == "Key findings"
    findings = page.locator("#key-findings").inner_text()
    assert len(re.findall(r"\d\.\d\d", findings)) >= 8, findings  # numbers, not prose only
    page.screenshot(path=str(_shot(small_run, "report")))
    page.close()

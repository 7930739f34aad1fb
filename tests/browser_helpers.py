"""What the browser tests share: Debian's Chromium, Playwright, and the marks that skip them without either."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
playwright = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is missing: pip install -e '.[test]'"
)
MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="browser tests need Debian's chromium at /usr/bin/chromium: "
        "sudo apt-get install -y chromium (.ci/run installs it)",
    ),
]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def open_page(browser, path: Path, width: int = 1200):
    """``path`` (a file) in a new page of ``browser``: (page, the console errors and page errors it logs)."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, errors

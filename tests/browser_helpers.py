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

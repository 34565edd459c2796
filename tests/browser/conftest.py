"""Browser fixtures: one headless Chromium (Debian's) for the browser tests, driven by
Playwright, a new browser context for each test, against the e2e tests' shared server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import missing_service
from tests.e2e.conftest import server  # noqa: F401 - the e2e tests' server, shared here

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Where the tests leave screenshots of the main pages for reviewers (git-ignored).
SCREENSHOTS = Path(__file__).resolve().parents[2] / "tests-output" / "screenshots"


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Chromium, started once for this package: a browser costs a second or two to start, a
    context nothing. Playwright's blocking API keeps an asyncio loop running on the main
    thread while it is open, so it must be closed before any other test calls asyncio.run()."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_service("Playwright for Python is not installed (pip install playwright)")
    executable = os.environ.get("BATCHSERVE_TEST_CHROMIUM", CHROMIUM)
    if not (os.path.exists(executable) or shutil.which(executable)):
        missing_service(f"Chromium is not installed at {executable} (apt-get install chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Any, server: Any) -> Iterator[Any]:  # noqa: F811 - the fixture above
    """A fresh browser profile (no cookies) on the shared server, for one test."""
    ctx = browser.new_context(base_url=server.url, viewport={"width": 1400, "height": 1000})
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS

"""Headless Chromium driven by Selenium (Debian ``chromium`` + ``chromium-driver``).

Screenshots go to ``$MXD_SCREENSHOTS`` when set, else to the test's temp directory
(never into the source tree)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.tools import require_module, require_tool


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium (``--headless=new --no-sandbox``: root in a container) with
    its performance log on, so tests can see every network request."""
    binary = require_tool("chromium")
    driver_path = require_tool("chromedriver")
    require_module("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--metrics-recording-only", "--disable-default-apps",
                "--host-resolver-rules=MAP evil.example 127.0.0.1",
                # Sandboxed iframes stay in their parent's process, so that the
                # performance log (which follows the page's own target only) also shows
                # the requests made from inside them; sandbox and CSP rules are the same.
                "--disable-features=IsolateSandboxedIframes",
                f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("MXD_SCREENSHOTS") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d

"""Browser tests: Debian's Chromium and ChromeDriver, driven by selenium; nothing is downloaded.

Without Chromium the tests skip with the reason (CI installs it, and fails instead of skipping).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from tests.integration.conftest import anyio_backend, env

__all__ = ["anyio_backend", "browser", "env"]

MISSING = (
    "Chromium or ChromeDriver is not installed: apt-get install chromium chromium-driver "
    "(.ci/run installs them when it runs as root)"
)


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Paths of the browser and its driver, found on PATH."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return browser, driver


@pytest.fixture
def browser(chromium: tuple[str, str]) -> Iterator[webdriver.Chrome]:
    """A headless Chromium session with its console log kept (CSP violations land there)."""
    binary, driver_path = chromium
    with tempfile.TemporaryDirectory(prefix="gw-chromium-") as profile:
        options = Options()
        options.binary_location = binary
        for argument in (
            "--headless=new",
            # Root in a container has no user namespaces for the sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1360,1560",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # An explicit driver path: selenium-manager is never asked to download anything.
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        try:
            yield driver
        finally:
            driver.quit()

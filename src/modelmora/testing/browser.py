"""Headless Chromium for the HTML viewer's tests and figures, driven by Selenium.

Debian's ``chromium`` and ``chromium-driver`` packages (``scripts/setup.sh`` installs them) and
Selenium (the ``dev`` extra). The flags let it run as root in a container with no network:
a fresh profile, no sandbox, no GPU, no background fetches; audio may play without a click.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

__all__ = ["CHROMIUM_FLAGS", "chromium", "chromium_available", "console_errors"]

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1280,900",
)


def _binaries() -> tuple[str | None, str | None]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    return browser, shutil.which("chromedriver")


def chromium_available() -> bool:
    """Whether Chromium, its driver and Selenium are all installed."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return all(_binaries())


@contextlib.contextmanager
def chromium(download_dir: str | None = None) -> Iterator[Any]:
    """A headless Chromium (a Selenium ``WebDriver``), quit on exit.

    Args:
        download_dir: where the page's downloads go (None: downloads are refused).

    Raises:
        RuntimeError: Chromium, chromedriver or Selenium is missing (says what to install).
    """
    browser, driver_path = _binaries()
    if not chromium_available() or browser is None or driver_path is None:
        raise RuntimeError(
            "the viewer's browser checks need chromium and chromium-driver "
            "(apt-get install chromium chromium-driver) and selenium (pip install selenium)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="modelmora-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            behaviour = {"behavior": "allow", "downloadPath": download_dir}
            if download_dir is None:
                behaviour = {"behavior": "deny"}
            driver.execute_cdp_cmd("Browser.setDownloadBehavior", behaviour)
            yield driver
        finally:
            driver.quit()


def console_errors(driver: Any) -> list[str]:
    """The page's console messages of level SEVERE since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]

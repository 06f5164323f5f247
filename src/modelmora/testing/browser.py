"""Headless browsers for the HTML viewer's tests and figures.

- Chromium, driven by Selenium: Debian's ``chromium`` and ``chromium-driver`` packages
  (``scripts/setup.sh`` installs them) and Selenium (the ``dev`` extra). The flags let it run
  as root in a container with no network: a fresh profile, no sandbox, no GPU, no background
  fetches; audio may play without a click.
- Firefox (Debian's ``firefox-esr``), driven over WebDriver BiDi, the protocol Firefox speaks
  itself (so no geckodriver, which Debian does not package): a small client on ``websockets``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CHROMIUM_FLAGS",
    "Firefox",
    "chromium",
    "chromium_available",
    "console_errors",
    "firefox",
    "firefox_available",
]

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


def firefox_available() -> bool:
    """Whether Firefox and the ``websockets`` package are installed."""
    try:
        import websockets.sync.client  # noqa: F401
    except ImportError:
        return False
    return bool(shutil.which("firefox-esr") or shutil.which("firefox"))


def _value(remote: dict[str, Any]) -> Any:
    """A BiDi remote value as plain Python (arrays, objects, numbers, strings...)."""
    kind, value = remote.get("type"), remote.get("value")
    if kind == "array":
        return [_value(item) for item in value or []]
    if kind == "object":
        return {key if isinstance(key, str) else _value(key): _value(v) for key, v in value or []}
    return value


class Firefox:
    """One Firefox tab over WebDriver BiDi: navigate, evaluate, console errors, screenshot."""

    def __init__(self, connection: Any) -> None:
        self._ws = connection
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        self.version = self.call("session.new", capabilities={})["capabilities"]["browserVersion"]
        self.call("session.subscribe", events=["log.entryAdded"])
        self.context = self.call("browsingContext.getTree")["contexts"][0]["context"]

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one BiDi command and return its result (events that come first are kept).

        Raises:
            RuntimeError: the browser answered with an error.
        """
        number = next(self._ids)
        self._ws.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=120))
            if message.get("id") != number:
                self._events.append(message)
                continue
            if message.get("type") == "error":
                raise RuntimeError(f"{method}: {message.get('error')}: {message.get('message')}")
            return dict(message["result"])

    def navigate(self, url: str) -> None:
        """Load ``url`` and wait for its load event."""
        self.call("browsingContext.navigate", context=self.context, url=url, wait="complete")

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (as after a user's click; promises are awaited).

        Raises:
            RuntimeError: the script threw.
        """
        result = self.call(
            "script.evaluate",
            expression=expression,
            target={"context": self.context},
            awaitPromise=True,
            userActivation=True,
        )
        if result.get("type") == "exception":
            raise RuntimeError(f"script failed: {result['exceptionDetails'].get('text')}")
        return _value(result["result"])

    def console_errors(self) -> list[str]:
        """The page's console errors so far."""
        return [
            str(event["params"].get("text"))
            for event in self._events
            if event.get("method") == "log.entryAdded" and event["params"].get("level") == "error"
        ]

    def screenshot(self, path: str | Path) -> None:
        """Save the viewport as a PNG."""
        shot = self.call("browsingContext.captureScreenshot", context=self.context)
        Path(path).write_bytes(base64.b64decode(shot["data"]))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def firefox() -> Iterator[Firefox]:
    """A headless Firefox with a fresh profile, closed on exit.

    Raises:
        RuntimeError: Firefox or ``websockets`` is missing, or Firefox did not start.
    """
    binary = shutil.which("firefox-esr") or shutil.which("firefox")
    if binary is None or not firefox_available():
        raise RuntimeError("needs firefox-esr (apt-get install firefox-esr) and websockets")
    from websockets.sync.client import connect

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="modelmora-firefox-") as profile:
        log = Path(profile) / "firefox.log"  # a file, not a pipe: a full pipe would block it
        command = [binary, "--headless", "--no-remote", "--profile", profile]
        with log.open("w") as out:
            process = subprocess.Popen(
                [*command, "--remote-debugging-port", str(port)], stdout=out, stderr=out
            )
        try:
            deadline = time.monotonic() + 60
            while "WebDriver BiDi listening" not in log.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"firefox did not start: {log.read_text()[-500:]}")
                time.sleep(0.1)
            with connect(f"ws://127.0.0.1:{port}/session", max_size=None) as connection:
                browser = Firefox(connection)
                try:
                    yield browser
                finally:
                    browser.call("session.end")
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

"""Headless Chromium for the report: open a page with the network closed to the browser, take a screenshot.

Uses Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``) through selenium
(``pip install selenium``), with a fresh profile and the flags that keep the browser from reaching out (no
background networking, component updates, sync or QUIC).
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def find_chromium() -> tuple[str, str]:
    """Paths of the ``chromium`` binary and of ``chromedriver``.

    Raises:
        FileNotFoundError: either is missing (the message says how to install them).
    """
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    if binary is None or driver is None:
        missing = "chromium" if binary is None else "chromedriver"
        raise FileNotFoundError(
            2, "headless Chromium is needed: apt-get install chromium chromium-driver, pip install selenium", missing
        )
    return binary, driver


def open_chromium(*, width: int = 1400, height: int = 1000, logs: bool = False):
    """A selenium ``WebDriver`` on a new headless Chromium with a fresh profile.

    Args:
        width, height: the window size in pixels.
        logs: record the console (``driver.get_log("browser")``) and network events (``"performance"``).

    Raises:
        FileNotFoundError: Chromium or its driver is not installed.
        ImportError: selenium is not installed.
    """
    binary, driver_path = find_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='convatlas-chromium-')}",
                 f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(flag)
    if logs:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def screenshot(page: str | Path, *, width: int = 1400, height: int | None = None, max_height: int = 6000) -> bytes:
    """A PNG of a local HTML file as headless Chromium renders it.

    Args:
        page: the HTML file.
        width: the window width.
        height: the window height; by default the page's full height (at most ``max_height``).
    """
    for name, value in (("width", width), ("height", height), ("max_height", max_height)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"screenshot: {name} must be a positive int of pixels, got {value!r}")
    page = Path(page)
    if not page.is_file():
        raise FileNotFoundError(2, "no such page", str(page))
    driver = open_chromium(width=width, height=height or 1000)
    try:
        driver.get(page.resolve().as_uri())
        if height is None:
            full = int(driver.execute_script("return document.documentElement.scrollHeight"))
            driver.set_window_size(width, min(full + 120, max_height))  # the window frame takes some of it
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:  # drop the alpha channel: smaller and opaque
        buffer = io.BytesIO()
        im.convert("RGB").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()

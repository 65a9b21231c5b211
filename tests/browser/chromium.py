"""Headless Chromium for the web app's test: Debian's `chromium` package, driven by Playwright.

Never `playwright install` (it downloads a browser build): install the system's browser with
`apt-get install -y chromium` and the `playwright` Python package from PyPI.
The test is skipped only when /usr/bin/chromium is missing and CI is not set; under CI=true a
missing browser (or Playwright) fails it instead.
"""

from __future__ import annotations

import importlib
import os
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(module: str):
    """Import a test dependency: skip without it, except under CI, where it must be there."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if in_ci():
            pytest.fail(f"{module} is missing ({e}); CI=true, not skipping")
        pytest.skip(f"{module} is not installed")


def require_chromium() -> Path:
    if not CHROMIUM.is_file():
        if in_ci():
            pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (CI=true, not skipping)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def pages(n: int, width: int = 1280, height: int = 1000):
    """n Playwright pages in headless system Chromium, each its own visitor (browser context)."""
    executable = require_chromium()
    sync_api = require("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(executable), args=ARGS)
        try:
            size = {"width": width, "height": height}
            yield [browser.new_context(viewport=size).new_page() for _ in range(n)]
        finally:
            browser.close()


@contextmanager
def page(width: int = 1280, height: int = 1000):
    """A Playwright page in headless system Chromium."""
    with pages(1, width, height) as (one,):
        yield one

"""Debian's Chromium for Playwright (no ``playwright install``: the Debian package ``chromium``)."""

from __future__ import annotations

from pathlib import Path

CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    for path in CHROMIUM_PATHS:
        if Path(path).exists():
            return path
    raise RuntimeError("Chromium not found: install the Debian package 'chromium' (.ci/run does)")

"""Debian's Chromium for Playwright (no ``playwright install``: the Debian package ``chromium``), and
the screenshots the browser tests leave in ``tests/artifacts/`` (git-ignored); with
``COVIDET_UPDATE_SCREENSHOTS=1`` they are also copied to ``docs/screenshots/`` for the docs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"

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


def screenshot(page: Any, name: str, *, full_page: bool = False) -> None:
    """``tests/artifacts/NAME.png``; also ``docs/screenshots/NAME.png`` when asked to refresh them."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if os.environ.get("COVIDET_UPDATE_SCREENSHOTS") == "1":  # refresh the docs' pictures on purpose
        shutil.copyfile(path, SCREENSHOTS / f"{name}.png")

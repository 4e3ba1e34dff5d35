"""`make lint` in `make test` (and so in CI): ruff over the code, mypy over the packages that the
Makefile's ``MYPY_PACKAGES`` names. Both read their settings from pyproject.toml."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _mypy_packages() -> list[str]:
    """The Makefile's ``MYPY_PACKAGES``, so that `make lint` and this test check the same files."""
    match = re.search(r"^MYPY_PACKAGES \?= (.+)$", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile: MYPY_PACKAGES not found"
    return match.group(1).split()


def test_ruff_finds_nothing() -> None:
    result = subprocess.run(
        [str(BIN / "ruff"), "check", "--no-cache", "src", "tests", "benchmarks"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing_in_the_checked_packages() -> None:
    packages = _mypy_packages()
    assert all((REPO_ROOT / p).exists() for p in packages), packages
    result = subprocess.run(
        [str(BIN / "mypy"), "--no-incremental", *packages],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0 and "Success: no issues found" in result.stdout, (
        result.stdout + result.stderr
    )

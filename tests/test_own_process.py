"""Runs the ``own_process`` test modules, each in a child pytest process (see tests/conftest.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import OWN_PROCESS_CHILD, REPO_ROOT

OWN_PROCESS_MODULES = ["tests/detection/test_accelerated.py"]


@pytest.mark.slow
@pytest.mark.parametrize("module", OWN_PROCESS_MODULES)
def test_module_passes_in_its_own_process(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module],
        cwd=REPO_ROOT,
        env={**os.environ, OWN_PROCESS_CHILD: "1"},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, (
        f"{module} failed in its own process:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    )
    assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-2000:]


def test_every_own_process_module_is_listed() -> None:
    marked = sorted(
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / "tests").rglob("test_*.py")
        if re.search(r"^pytestmark = pytest\.mark\.own_process", path.read_text(encoding="utf-8"), re.M)
    )
    assert marked == sorted(OWN_PROCESS_MODULES)

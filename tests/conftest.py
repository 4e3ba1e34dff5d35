"""Shared fixtures: the real chest X-ray dataset and the real DICOM of pydicom-data.

The dataset is read from ``$COVIDET_DATA`` or, in a checkout laid out as the project's machines are,
from ``../shared/data/cxr`` beside the repository. It is required: tests fail (not skip) without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def dataset_root() -> Path:
    env = os.environ.get("COVIDET_DATA")
    root = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "cxr"
    if not (root / "manifest.csv").is_file():
        raise RuntimeError(f"chest X-ray dataset not found at {root}: set COVIDET_DATA")
    return root


@pytest.fixture(scope="session")
def data_root() -> Path:
    return dataset_root()


def manifest_images(root: Path, split: str) -> set[str]:
    """The ``image`` column of the manifest rows of ``split``, read with the csv module alone, so that
    tests compare covidet's loaders with the data set's own file whatever its version."""
    import csv

    with (root / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        return {row["image"] for row in csv.DictReader(handle) if row["split"] == split}


@pytest.fixture(scope="session")
def rg1_dicom() -> Path:
    """Real 16-bit MONOCHROME1 chest PA radiograph shipped by the PyPI package pydicom-data."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    assert path is not None, "pydicom-data is not installed"
    return Path(path)


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL cluster for the whole test session (see tests/servers.py)."""
    from tests.servers import start_postgres

    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> str:
    """A fresh, empty database on each backend: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'covidet.db'}"
    server = request.getfixturevalue("postgres_server")
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    base = server.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url.rsplit("/", 1)[0] + f"/{name}"


OWN_PROCESS_CHILD = "COVIDET_TEST_OWN_PROCESS_CHILD"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave ``own_process`` tests to tests/test_own_process.py, which runs them in a child pytest.

    They load ONNX Runtime and OpenVINO (native thread pools, TBB) into the interpreter. After them, the
    full suite crashed later with a segfault in unrelated threads (a Python frame overwritten; seen
    three times at different tests, never with those modules alone). Running them in their own process
    keeps every test real and the rest of the suite clear of whatever those libraries leave behind.
    When only ``own_process`` tests are collected (a developer running that module), they run here.
    """
    if os.environ.get(OWN_PROCESS_CHILD) == "1":
        return
    own = [item for item in items if item.get_closest_marker("own_process")]
    if own and len(own) < len(items):
        config.hook.pytest_deselected(items=own)
        items[:] = [item for item in items if not item.get_closest_marker("own_process")]

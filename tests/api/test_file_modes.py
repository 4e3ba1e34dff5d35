"""The covidet home, its database and its image store are its owner's only (0700 folders, 0600 files),
whatever the umask: other local users must not read patient identifiers or X-rays."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from covidet.api import create_app
from covidet.config import Settings
from tests.api.conftest import dataset_jpegs, serve

#: Written by `covidet devices add` for the Mosquitto broker, which runs as another user and must read
#: them: their modes are set on purpose by covidet.ingest.mqtt (docs/mqtt.md), not checked here.
BROKER_FILES = "mosquitto"


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # the usual default, which made covidet.db 0644
    yield
    os.umask(previous)


def cli(home: Path, *args: str, stdin: str = "") -> str:
    env = {**os.environ, "COVIDET_HOME": str(home)}
    env.pop("COVIDET_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "covidet.cli", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_home_database_and_images_are_private(
    tmp_path: Path, data_root: Path, permissive_umask: None
) -> None:
    home = tmp_path / "home"
    cli(home, "users", "add", "alice", "--role", "admin", stdin="a strong sign-in phrase\n")
    key = json.loads(cli(home, "devices", "add", "ward-phone", "--kind", "uploader"))["api_key"]
    app = create_app(Settings(home=home))  # the server makes its own database and image store
    with serve(app) as base_url:
        answer = httpx.post(
            f"{base_url}/api/v1/images",
            files={"file": ("x.jpg", dataset_jpegs(data_root, 1)[0].read_bytes(), "image/jpeg")},
            data={"patient_id": "P-1"},
            headers={"X-API-Key": key},
            timeout=60,
        )
        assert answer.status_code == 201, answer.text
    files = [p for p in home.rglob("*") if BROKER_FILES not in p.relative_to(home).parts]
    names = {p.name for p in files}
    assert {"covidet.db", "secret_key", "images"} <= names
    assert any(p.suffix == ".jpg" for p in files)
    modes = {str(p.relative_to(home)): stat.S_IMODE(p.stat().st_mode) for p in [home, *files]}
    wrong = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert not wrong, wrong  # nothing readable, writable or searchable by group or others
    assert modes["covidet.db"] == 0o600 and modes["."] == 0o700 and modes["images"] == 0o700


def test_an_existing_world_readable_database_is_narrowed(tmp_path: Path, permissive_umask: None) -> None:
    from covidet.store.db import Database

    path = tmp_path / "old.db"
    Database(f"sqlite:///{path}").dispose()
    path.chmod(0o644)  # as covidet made it before
    Database(f"sqlite:///{path}").dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

"""The scale-out path: jobs over a real private Redis to real `covidet worker` processes.

A job waits in Redis while no worker runs, and the job of a worker killed mid-analysis (SIGKILL, so
it cannot acknowledge or reject) is delivered again after the visibility timeout: late acks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from covidet.config import get_settings
from covidet.store import Database, Image, ImageStatus
from covidet.store.models import Inference
from covidet.worker.runtime import build_runtime


@pytest.fixture(scope="module")
def redis_server():
    from tests.servers import start_redis

    server = start_redis()
    yield server
    server.stop()


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "covidet.cli", "worker", "--log-level", "INFO"],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_jobs_wait_in_redis_and_survive_a_killed_worker(
    redis_server, tmp_path: Path, rg1_dicom: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'covidet.db'}"
    env = {
        **os.environ,
        "COVIDET_HOME": str(tmp_path),
        "COVIDET_DATABASE_URL": database_url,
        "COVIDET_QUEUE": "celery",
        "COVIDET_REDIS_URL": redis_server.url,
        "COVIDET_CELERY_VISIBILITY_TIMEOUT": "4",
        "COVIDET_THREADS": "1",
    }
    settings = get_settings(
        home=tmp_path, database_url=database_url, queue="celery", redis_url=redis_server.url
    )
    runtime = build_runtime(settings)
    db = Database(database_url)

    def status(image_id: int) -> str:
        with db.session() as session:
            return session.get(Image, image_id).status

    # 1. No worker yet: the job waits in Redis.
    accepted = runtime.ingest.accept(rg1_dicom.read_bytes(), channel="dicom", device_id=None)
    time.sleep(1.0)
    assert status(accepted.image_id) == ImageStatus.QUEUED

    # 2. A worker starts and is killed while the job runs (it loads the model inside the job).
    log = tmp_path / "worker.log"
    first = _start_worker(env, log)
    try:
        _wait_for(lambda: b"Task covidet.analyse_image" in log.read_bytes(), timeout=60)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    assert status(accepted.image_id) == ImageStatus.QUEUED

    # 3. A new worker gets the unacknowledged job again and finishes it, once.
    second = _start_worker(env, log)
    try:
        _wait_for(lambda: status(accepted.image_id) == ImageStatus.ANALYSED, timeout=120)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(30)
    with db.session() as session:
        inferences = session.scalars(select(Inference)).all()
        assert len(inferences) == 1 and inferences[0].status == "succeeded"
        assert inferences[0].attempts in (1, 2)  # 2 when the killed worker had already started it
        assert session.get(Image, accepted.image_id).priority in {"urgent", "high", "routine"}
    runtime.close()
    db.dispose()

"""Load-test findings 1 and 2 (docs/load.md) through the API, with httpx against a running server.

1. A request that finds no free database connection is refused with 503 and Retry-After (and one
   log line), not a 500 with a traceback; the pool of a configured server is sized from what it serves.
2. Audit events of concurrent reads share write transactions (group commit) instead of one
   ``BEGIN IMMEDIATE`` each, and every read is still in the audit log, also after a graceful stop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from covidet.api import create_app
from covidet.api.audit_writer import audit_writer_for
from covidet.config import Settings
from covidet.ingest.service import ImageIngest
from covidet.ingest.storage import ImageStore
from covidet.store.db import API_THREADS, BACKGROUND_CONNECTIONS, Database
from covidet.store.models import AuditEvent
from covidet.worker.queue import InProcessQueue
from tests.api.conftest import PASSWORDS, add_user, serve
from tests.ingest.test_mqtt import wait_until


def audit_count(db: Database, action: str | None = None) -> int:
    with db.session() as session:
        query = select(func.count()).select_from(AuditEvent)
        if action is not None:
            query = query.where(AuditEvent.action == action)
        return int(session.scalar(query) or 0)


def make_app(settings: Settings, db: Database) -> Any:
    ingest = ImageIngest(
        db,
        ImageStore(settings.image_store_dir),
        InProcessQueue(),
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
    )
    add_user(db, "rad", "radiologist", PASSWORDS["rad"])
    return create_app(settings, db=db, ingest=ingest)


def bearer(client: httpx.Client) -> dict[str, str]:
    answer = client.post("/api/v1/auth/token", data={"username": "rad", "password": PASSWORDS["rad"]})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'covidet.db'}"


# ------------------------------------------------------------------------------- finding 1: the pool


def test_the_pool_is_sized_from_what_the_server_serves(tmp_path: Path, sqlite_url: str) -> None:
    """Every DICOM association, API thread and background thread can hold a connection at once (the
    old pool: 5 + 10 overflow, whatever the configuration)."""
    settings = Settings(home=tmp_path, database_url=sqlite_url, dicom_max_associations=48, analysis_workers=2)
    db = Database.from_settings(settings)
    try:
        expected = 48 + API_THREADS + 2 + BACKGROUND_CONNECTIONS
        held = [db.engine.connect() for _ in range(expected)]  # the old pool waits 30 s at the 16th
        assert db.engine.pool.checkedout() == expected
        for connection in held:
            connection.close()
        explicit = Database.from_settings(
            Settings(home=tmp_path, database_url=sqlite_url, db_pool_size=3, db_pool_timeout=0.2)
        )
        held = [explicit.engine.connect() for _ in range(3)]
        with pytest.raises(Exception, match="QueuePool limit of size 3 overflow 0"):
            explicit.engine.connect()  # bounded: 0.2 s, not 30 s, and no overflow past the setting
        for connection in held:
            connection.close()
        explicit.dispose()
    finally:
        db.dispose()


def test_a_request_without_a_free_connection_gets_503_with_retry_after(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(home=tmp_path / "home", database_url=sqlite_url)
    db = Database(sqlite_url, pool_size=2, max_overflow=0, pool_timeout=0.3)
    app = make_app(settings, db)
    try:
        with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
            headers = bearer(client)
            assert client.get("/api/v1/worklist", headers=headers).status_code == 200
            held = [db.engine.connect() for _ in range(2)]  # every connection of the pool is taken
            try:
                with caplog.at_level(logging.WARNING, logger="covidet"):
                    answer = client.get("/api/v1/worklist", headers=headers)
                    studies = client.get("/api/v1/studies", headers=headers)
                    # A request with a body: its credential is checked before the body is read, by
                    # the body guard, outside the app's exception handlers.
                    review = client.post("/api/v1/reviews", headers=headers, json={"image_id": 1})
            finally:
                for connection in held:
                    connection.close()
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "5"
            assert "database busy" in answer.json()["detail"]
            assert studies.status_code == 503
            assert review.status_code == 503, review.text
            assert review.headers["Retry-After"] == "5"
            logged = [r for r in caplog.records if "answered 503" in r.getMessage()]
            assert logged and all(r.exc_info is None for r in logged), "one line per refusal, no traceback"
            assert "/api/v1/worklist" in logged[0].getMessage()
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
            # Connections back: served again.
            assert client.get("/api/v1/worklist", headers=headers).status_code == 200
    finally:
        db.dispose()


# ----------------------------------------------------------------------------- finding 2: the audit


@pytest.fixture
def served(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[Database, httpx.Client, dict[str, str]]]:
    settings = Settings(home=tmp_path / "home", database_url=sqlite_url)
    db = Database.from_settings(settings)
    app = make_app(settings, db)
    try:
        with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=120) as client:
            yield db, client, bearer(client)
    finally:
        db.dispose()


def test_concurrent_reads_share_audit_transactions_and_all_are_audited(
    served: tuple[Database, httpx.Client, dict[str, str]], sqlite_url: str
) -> None:
    db, client, headers = served
    n = 16
    # One read first: the token's last-used time is written then (at most once a minute), so the
    # reads below write nothing but their audit events.
    assert client.get("/api/v1/worklist", headers=headers).status_code == 200
    writer = audit_writer_for(db)
    before = audit_count(db, "read.worklist")
    transactions_before = writer.transactions
    # Another writer holds SQLite's write lock (as the DICOM or MQTT ingest does under load) while
    # the n reads arrive: each read's audit event must wait for it.
    lock = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    answers: list[int] = []

    def read() -> None:
        answers.append(client.get("/api/v1/worklist", headers=headers).status_code)

    threads = [threading.Thread(target=read) for _ in range(n)]
    try:
        for thread in threads:
            thread.start()
        # Every event is with the audit writer (one in its blocked transaction, the rest queued),
        # and no read holds a database connection while it waits for its event.
        wait_until(lambda: writer.pending() >= n - 1, 60, "the audit events of every read")
        assert db.engine.pool.checkedout() <= 2
        assert answers == [], "no read is answered before its audit event is committed"
    finally:
        lock.execute("COMMIT")
        lock.close()
    for thread in threads:
        thread.join(60)
    assert answers == [200] * n
    assert audit_count(db, "read.worklist") == before + n
    # One transaction for the event that took the lock first, one for all the others (the old
    # code: one transaction per read, n in all).
    assert writer.transactions - transactions_before <= 2


def test_every_read_is_in_the_audit_log_after_a_graceful_stop(
    served: tuple[Database, httpx.Client, dict[str, str]], sqlite_url: str
) -> None:
    db, client, headers = served
    n = 24
    answers: list[int] = []

    def read(path: str) -> None:
        answers.append(client.get(path, headers=headers).status_code)

    paths = ["/api/v1/worklist", "/api/v1/studies"] * (n // 2)
    threads = [threading.Thread(target=read, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == [200] * n
    db.dispose()  # the graceful stop: the audit writer commits what waits, then stops
    reopened = Database(sqlite_url, migrate=False)
    try:
        assert audit_count(reopened, "read.worklist") == n // 2
        assert audit_count(reopened, "read.studies") == n // 2
    finally:
        reopened.dispose()

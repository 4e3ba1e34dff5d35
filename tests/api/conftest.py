"""Fixtures of the JSON API tests: an app over a fresh database, users of each role, and images
accepted through the real ingest path with AI results written as the worker writes them."""

from __future__ import annotations

import contextlib
import csv
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from covidet.api.auth import hash_password
from covidet.app.server import create_app
from covidet.config import Settings
from covidet.ingest.service import ImageIngest
from covidet.ingest.storage import ImageStore
from covidet.store import review_queries as rq
from covidet.store.db import Database
from covidet.store.models import FindingRecord, Image, Inference, TriageRecord
from covidet.worker.queue import InProcessQueue
from tests.servers import free_port

PASSWORDS = {"admin": "admin-password-1", "rad": "radiologist-pw-1", "rad2": "radiologist-pw-2"}


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yields the base URL. Forwarded
    headers are trusted from loopback, as behind a TLS-terminating proxy (X-Forwarded-Proto)."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-api-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@dataclass
class Seeded:
    image_id: int
    study_id: int
    patient_id: int
    inference_id: int | None
    finding_ids: list[int] = field(default_factory=list)


@dataclass
class ApiEnv:
    app: FastAPI
    settings: Settings
    db: Database
    store: ImageStore
    ingest: ImageIngest
    users: dict[str, int]

    @contextlib.contextmanager
    def client(self, *, headers: dict[str, str] | None = None) -> Iterator[httpx.Client]:
        """A client of the app served by a real uvicorn on a loopback port (in a thread)."""
        with (
            serve(self.app) as base_url,
            httpx.Client(base_url=base_url, timeout=60, headers=headers) as client,
        ):
            yield client

    def token(self, client: httpx.Client, username: str) -> dict[str, str]:
        """``Authorization`` header of a fresh bearer token of ``username``."""
        answer = client.post(
            "/api/v1/auth/token", data={"username": username, "password": PASSWORDS[username]}
        )
        assert answer.status_code == 200, answer.text
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def dataset_jpegs(data_root: Path, count: int) -> list[Path]:
    with (data_root / "manifest.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "val"]
    return [data_root / row["image"] for row in rows[:count]]


def add_user(db: Database, username: str, role: str, password: str) -> int:
    with db.session(write=True) as session:
        return rq.create_user(session, username, password_hash=hash_password(password), role=role).id


def seed_image(
    env: ApiEnv,
    data: bytes,
    *,
    patient_key: str,
    priority: str | None = None,
    received_at: datetime | None = None,
    label: str | None = "covid19",
    findings: Sequence[tuple[str, float, tuple[float, float, float, float]]] = (),
    reasons: Sequence[str] = ("seeded",),
) -> Seeded:
    """Accept ``data`` through the real upload path, then record an AI result as the worker does
    (``label=None``: leave the image queued, unanalysed)."""
    accepted = env.ingest.accept(
        data, channel="upload", device_id=None, source="test", patient_key=patient_key
    )
    now = datetime.now(UTC)
    with env.db.session(write=True) as session:
        image = session.get(Image, accepted.image_id)
        assert image is not None
        if received_at is not None:
            image.received_at = received_at
        inference_id = None
        finding_ids: list[int] = []
        if label is not None:
            others = [x for x in ("covid19", "pneumonia", "normal") if x != label]
            inference = Inference(
                image_id=image.id,
                model_name="covidet-frcnn-r101",
                model_version="test-1",
                decision_rule="max-score-v1",
                threshold=0.5,
                status="succeeded",
                attempts=1,
                label=label,
                probabilities={label: 0.8, others[0]: 0.15, others[1]: 0.05},
                started_at=now,
                finished_at=now,
            )
            inference.findings = [
                FindingRecord(label=lab, score=score, x1=b[0], y1=b[1], x2=b[2], y2=b[3])
                for lab, score, b in findings
            ]
            session.add(inference)
            session.flush()
            inference_id = inference.id
            finding_ids = [f.id for f in inference.findings]
            image.status = "analysed"
        if priority is not None:
            session.add(
                TriageRecord(
                    image_id=image.id,
                    inference_id=inference_id,
                    priority=priority,
                    rule="H2",
                    reasons=list(reasons),
                    vital_sign_ids=[],
                    computed_at=now,
                )
            )
            image.priority = priority
            image.priority_updated_at = now
    return Seeded(accepted.image_id, accepted.study_id, accepted.patient_id, inference_id, finding_ids)


def make_env(tmp_path: Path, database_url: str, **overrides: object) -> ApiEnv:
    settings = Settings(home=tmp_path / "home", database_url=database_url, **overrides)  # type: ignore[arg-type]
    db = Database(database_url)
    store = ImageStore(settings.image_store_dir)
    queue = InProcessQueue()  # no consumer: images stay as the tests leave them
    ingest = ImageIngest(
        db, store, queue, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
    )
    app = create_app(settings, db=db, ingest=ingest)
    users = {
        "admin": add_user(db, "admin", "admin", PASSWORDS["admin"]),
        "rad": add_user(db, "rad", "radiologist", PASSWORDS["rad"]),
        "rad2": add_user(db, "rad2", "radiologist", PASSWORDS["rad2"]),
    }
    return ApiEnv(app, settings, db, store, ingest, users)


@pytest.fixture
def api_env(database_url: str, tmp_path: Path) -> Iterator[ApiEnv]:
    """An app over a fresh database of each backend, with users admin, rad and rad2."""
    env = make_env(tmp_path, database_url)
    yield env
    env.ingest.queue.close()  # type: ignore[attr-defined]
    env.db.dispose()


@pytest.fixture
def sqlite_env(tmp_path: Path) -> Iterator[ApiEnv]:
    """The same on SQLite only, for tests of the HTTP layer where the backend does not matter."""
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'covidet.db'}")
    yield env
    env.ingest.queue.close()  # type: ignore[attr-defined]
    env.db.dispose()


def hours_ago(hours: float) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours)

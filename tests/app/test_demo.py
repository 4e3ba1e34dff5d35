"""``covidet demo``'s parts in the wiring layer: the old import path keeps its names, and the announcer's
"assessed" line waits for every image's analysis and triage (a real SQLite database; the whole demo
runs end to end in tests/e2e/test_web.py)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import covidet.demo
from covidet.app import broker, demo, demo_accounts, processes
from covidet.app.demo_announcer import DemoRun
from covidet.config import Settings
from covidet.store import Database, Image, ImageStatus
from tests.store.test_stats_queries import add_images


def test_the_old_import_path_keeps_every_name() -> None:
    assert covidet.demo.run_demo is demo.run_demo and covidet.demo.DemoError is demo.DemoError
    assert covidet.demo.default_dataset is demo.default_dataset
    assert covidet.demo.register_demo is demo_accounts.register_demo
    assert covidet.demo.DemoAccounts is demo_accounts.DemoAccounts
    assert (covidet.demo.DEMO_ADMIN, covidet.demo.DEMO_RADIOLOGIST, covidet.demo.DEMO_MODALITY_AE) == (
        "demo-admin",
        "demo-radiologist",
        "COVIDET-SIM",
    )
    assert covidet.demo.start_mosquitto is broker.start_mosquitto
    assert covidet.demo.Mosquitto is broker.Mosquitto and covidet.demo.find_mosquitto is broker.find_mosquitto
    assert covidet.demo.free_port is processes.free_port
    assert covidet.demo.wait_for_port is processes.wait_for_port
    assert set(covidet.demo.__all__) >= {
        "DEMO_ADMIN", "DEMO_MODALITY_AE", "DEMO_RADIOLOGIST", "DemoAccounts", "DemoError", "Mosquitto",
        "default_dataset", "find_mosquitto", "free_port", "register_demo", "run_demo", "start_mosquitto",
        "wait_for_port",
    }  # fmt: skip


def _set_images(db: Database, rows: list[tuple[ImageStatus, str | None]]) -> None:
    """Give the images, in order, these (status, priority) pairs, as the worker would."""
    with db.session(write=True) as session:
        images = session.query(Image).order_by(Image.id).all()
        for image, (status, priority) in zip(images, rows, strict=True):
            image.status, image.priority = status.value, priority


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'covidet.db'}")
    yield database
    database.dispose()


def test_the_assessed_line_waits_for_analysis_and_triage(db: Database, tmp_path: Path) -> None:
    accounts = demo_accounts.register_demo(db, admin_password="a" * 12, radiologist_password="r" * 12)
    out = io.StringIO()
    run = DemoRun(
        settings=Settings(home=tmp_path),
        port=8000,
        dicom_port=11112,
        accounts=accounts,
        broker=None,
        dataset=None,
        limit=3,
        home=tmp_path,
        temporary=True,
        out=out,
    )
    analysed, queued, failed = ImageStatus.ANALYSED, ImageStatus.QUEUED, ImageStatus.FAILED
    # Two analysed, one of them not triaged yet, one still queued: nothing is said.
    add_images(db, [(analysed, "urgent"), (analysed, None), (queued, None)])
    watcher = threading.Thread(target=run._watch, args=(db,), kwargs={"expected": 3})
    watcher.start()
    try:
        watcher.join(2.5)
        assert watcher.is_alive() and out.getvalue() == ""
        # Every image analysed (or failed) and every analysed one triaged: one line, then the watch ends.
        _set_images(db, [(analysed, "urgent"), (analysed, "routine"), (failed, None)])
        watcher.join(30)  # it looks once a second
        assert not watcher.is_alive()
    finally:
        run.stop.set()
        watcher.join(5)
    (line,) = out.getvalue().splitlines()
    assert line.startswith("assessed: 2 of 3 images (1 urgent, 0 high, 1 routine) ")
    assert line.endswith("s after start: open http://127.0.0.1:8000/worklist")

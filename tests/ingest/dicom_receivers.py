"""A DICOM receiver with chosen options (association policy, timeouts, TLS) over SQLite, for the
tests of the receiver's defences (test_dicom_checks, test_dicom_assoc, test_dicom_tls)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from covidet.ingest.dicom_scp import DicomReceiver
from covidet.ingest.service import ImageIngest
from covidet.ingest.storage import ImageStore
from covidet.store import queries
from covidet.store.db import Database
from covidet.worker.queue import InProcessQueue
from tests.ingest.conftest import MODALITY_AE, Harness

__all__ = ["receiver_factory"]


@pytest.fixture
def receiver_factory(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """``start(**receiver_options)`` -> a running receiver (SQLite, a registered modality
    ``MODALITY_AE``); ``start(settings=Settings(...))`` builds it with ``DicomReceiver.from_settings``.
    Everything is stopped at the end of the test."""
    started: list[Harness] = []

    def start(*, settings: Any = None, **options: Any) -> Harness:
        db = Database(f"sqlite:///{tmp_path / f'covidet-{len(started)}.db'}")
        with db.session(write=True) as session:
            device = queries.create_device(session, f"xray-{len(started)}", "modality", ae_title=MODALITY_AE)
        store = ImageStore(tmp_path / f"images-{len(started)}")
        analysis_queue = InProcessQueue()
        ingest = ImageIngest(db, store, analysis_queue, max_bytes=200 * 1024 * 1024, max_pixels=50_000_000)
        if settings is not None:
            receiver = DicomReceiver.from_settings(settings, db, ingest, host="127.0.0.1", port=0)
        else:
            receiver = DicomReceiver(db, ingest, port=0, **options)
        receiver.start()
        harness = Harness(db, store, analysis_queue, ingest, receiver, device.device_id)
        started.append(harness)
        return harness

    yield start
    for harness in started:
        harness.receiver.stop(timeout=2)
        harness.db.dispose()

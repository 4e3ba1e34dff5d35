"""Load-test finding 1 (docs/load.md) through the DICOM receiver, with pynetdicom Storage SCUs.

* A receiver configured for N associations has a database pool for all of them: N C-STOREs that all
  wait for SQLite's write lock at once (held by another writer, as the MQTT writer or an API write
  holds it under load) each hold a connection, and all are stored once the lock is free. The old pool
  (5 + 10 overflow) let 15 through and left the rest to wait for a connection.
* A C-STORE that finds no free connection within ``db_pool_timeout`` is answered 0xA700 (out of
  resources) with the reason as Error Comment and one log line, not 0xA701 with a traceback.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import func, select

from covidet.config import Settings
from covidet.ingest.dicom_scp import DicomReceiver, StoreStatus
from covidet.ingest.service import ImageIngest
from covidet.ingest.storage import ImageStore
from covidet.store import queries
from covidet.store.db import Database
from covidet.store.models import Image
from covidet.worker.queue import InProcessQueue
from tests.ingest.conftest import MODALITY_AE
from tests.ingest.test_mqtt import wait_until

DX = "1.2.840.10008.5.1.4.1.1.1.1"


def start_receiver(settings: Settings, db: Database) -> DicomReceiver:
    with db.session(write=True) as session:
        queries.create_device(session, "xray-room-1", "modality", ae_title=MODALITY_AE)
    ingest = ImageIngest(
        db,
        ImageStore(settings.image_store_dir),
        InProcessQueue(),  # no consumer: the images stay queued
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
    )
    receiver = DicomReceiver.from_settings(settings, db, ingest, host="127.0.0.1", port=0)
    receiver.start()
    return receiver


def associate(port: int) -> Any:
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(DX, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="COVIDET")
    assert assoc.is_established
    return assoc


def fresh_copy(ds: Dataset) -> Dataset:
    """The same X-ray as a new instance in a new study (so that nothing deduplicates it)."""
    copy = deepcopy(ds)  # Dataset.copy() shares the elements: setting a UID would change the source
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    copy.StudyInstanceUID = generate_uid()
    copy.SeriesInstanceUID = generate_uid()
    return copy


def stored_images(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Image)) or 0)


def test_every_admitted_association_gets_a_connection_while_the_write_lock_is_held(
    tmp_path: Path, cxr_dicom_files: list[Path]
) -> None:
    n = 20  # more than the old pool's 5 + 10
    url = f"sqlite:///{tmp_path / 'covidet.db'}"
    settings = Settings(home=tmp_path / "home", database_url=url, dicom_max_associations=n)
    db = Database.from_settings(settings)  # as the runtime makes it: sized from the settings
    receiver = start_receiver(settings, db)
    source = dcmread(cxr_dicom_files[0])
    statuses: list[int] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            assoc = associate(receiver.port)
            try:
                statuses.append(int(assoc.send_c_store(fresh_copy(source)).Status))
            finally:
                assoc.release()
        except BaseException as exc:  # reported below, with the statuses
            errors.append(exc)

    lock = sqlite3.connect(tmp_path / "covidet.db", timeout=30, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    threads = [threading.Thread(target=send) for _ in range(n)]
    try:
        for thread in threads:
            thread.start()
        # Every C-STORE waits for the write lock holding its own connection; none waits for one.
        wait_until(lambda: db.engine.pool.checkedout() >= n, 25, f"{n} C-STOREs holding a connection each")
    finally:
        lock.execute("COMMIT")
        lock.close()
    for thread in threads:
        thread.join(120)
    try:
        assert not errors, errors
        assert statuses == [StoreStatus.SUCCESS] * n
        assert stored_images(db) == n
    finally:
        receiver.stop(timeout=2)
        db.dispose()


def test_a_c_store_without_a_free_connection_gets_0xa700_with_the_reason(
    tmp_path: Path, cxr_dicom_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'covidet.db'}"
    settings = Settings(home=tmp_path / "home", database_url=url)
    db = Database(url, pool_size=1, max_overflow=0, pool_timeout=0.3)
    receiver = start_receiver(settings, db)
    try:
        assoc = associate(receiver.port)
        try:
            held = db.engine.connect()  # the pool's only connection is taken
            try:
                with caplog.at_level(logging.WARNING, logger="covidet"):
                    status = assoc.send_c_store(fresh_copy(dcmread(cxr_dicom_files[1])))
            finally:
                held.close()
            # Connections back: the modality's retry is stored.
            retry = assoc.send_c_store(fresh_copy(dcmread(cxr_dicom_files[1])))
        finally:
            assoc.release()
        assert status.Status == StoreStatus.OUT_OF_RESOURCES
        assert "database busy" in status.ErrorComment
        assert retry.Status == StoreStatus.SUCCESS
        assert stored_images(db) == 1
        refusals = [r for r in caplog.records if "refused (0xA700)" in r.getMessage()]
        assert len(refusals) == 1 and refusals[0].exc_info is None
        assert MODALITY_AE in refusals[0].getMessage()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        receiver.stop(timeout=2)
        db.dispose()

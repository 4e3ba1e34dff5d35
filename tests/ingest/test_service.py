"""The shared accept path of the DICOM receiver and the upload: validate, store, record, enqueue."""

from __future__ import annotations

import csv
import hashlib
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from covidet.imaging.dicom_writer import dicom_bytes, xray_to_dicom
from covidet.ingest.service import ImageIngest, IngestRejected
from covidet.ingest.storage import ImageStore
from covidet.store import Database, Image, ImageStatus, RejectedMessage, queries
from covidet.worker.queue import InProcessQueue, requeue_pending


@pytest.fixture
def setup(database_url: str, tmp_path: Path):
    db = Database(database_url)
    analysis = InProcessQueue()
    ingest = ImageIngest(
        db, ImageStore(tmp_path / "images"), analysis, max_bytes=50_000_000, max_pixels=10_000_000
    )
    yield db, ingest, analysis
    db.dispose()


def _first_images(data_root: Path, count: int) -> list[Path]:
    with open(data_root / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["tier_tiny"] == "1"]
    return [data_root / r["image"] for r in rows[:count]]


def test_dicom_and_jpeg_are_stored_recorded_and_enqueued(setup, rg1_dicom: Path, data_root: Path) -> None:
    db, ingest, analysis = setup
    dicom = rg1_dicom.read_bytes()
    result = ingest.accept(dicom, channel="dicom", device_id=None, source="TEST")
    jpeg_path = _first_images(data_root, 1)[0]
    jpeg = ingest.accept(
        jpeg_path.read_bytes(), channel="upload", device_id=None, patient_key="P-9", filename="x.jpg"
    )
    assert not result.duplicate and not jpeg.duplicate
    assert analysis.enqueued == 2
    with db.session() as session:
        image = session.get(Image, result.image_id)
        assert image.sop_instance_uid == dcmread(rg1_dicom).SOPInstanceUID
        assert image.status == ImageStatus.QUEUED
        assert (image.rows, image.columns) == (1955, 1841)
        assert image.content_sha256 == hashlib.sha256(dicom).hexdigest()
        assert ingest.store.read(image.path) == dicom
        uploaded = session.get(Image, jpeg.image_id)
        assert uploaded.media_type == "image/jpeg" and uploaded.study.patient.patient_key == "P-9"
        assert queries.counts(session) | {"devices": 0} == {
            "images": 2,
            "studies": 2,
            "patients": 2,
            "vitals": 0,
            "rejected_messages": 0,
            "devices": 0,
            "inferences": 0,
            "failed_inferences": 0,
            "priorities": {"urgent": 0, "high": 0, "routine": 0},
        }


def test_the_same_image_twice_is_acknowledged_and_stored_once(setup, rg1_dicom: Path) -> None:
    db, ingest, analysis = setup
    first = ingest.accept(rg1_dicom.read_bytes(), channel="dicom", device_id=None)
    again = ingest.accept(rg1_dicom.read_bytes(), channel="dicom", device_id=None)
    assert again.duplicate and again.image_id == first.image_id
    assert analysis.enqueued == 1
    with db.session() as session:
        assert queries.counts(session)["images"] == 1


def test_concurrent_sends_of_one_sop_instance_store_it_once(setup, data_root: Path) -> None:
    db, ingest, _ = setup
    data = dicom_bytes(xray_to_dicom(_first_images(data_root, 1)[0], patient_id="RACE"))
    results = []
    barrier = threading.Barrier(6)

    def send() -> None:
        barrier.wait()
        results.append(ingest.accept(data, channel="dicom", device_id=None))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6 and len({r.image_id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    with db.session() as session:
        assert queries.counts(session)["images"] == 1


def _dx(data_root: Path, **changes) -> bytes:
    ds = xray_to_dicom(_first_images(data_root, 1)[0], patient_id="BAD")
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return dicom_bytes(ds)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: b"just some text, not an image", "not a DICOM file and not a PNG/JPEG"),
        (lambda root: _dx(root, PixelData=None), "no pixel data"),
        (lambda root: _dx(root, PixelData=b"\0" * 1000), "truncated DICOM pixel data"),
        (
            lambda root: _dx(root, SOPClassUID="1.2.840.10008.5.1.4.1.1.2"),
            "SOP class 1.2.840.10008.5.1.4.1.1.2",
        ),
        (lambda root: _dx(root, Rows=30000, Columns=30000), "image too large"),
        (lambda root: _first_images(root, 1)[0].read_bytes()[:300], "truncated or corrupt PNG/JPEG"),
    ],
    ids=["text", "no-pixels", "truncated", "ct-sop-class", "too-many-pixels", "truncated-jpeg"],
)
def test_bad_input_is_refused_recorded_and_loses_nothing(
    setup, data_root: Path, rg1_dicom, make, message
) -> None:
    db, ingest, _ = setup
    kept = ingest.accept(rg1_dicom.read_bytes(), channel="dicom", device_id=None)
    with pytest.raises(IngestRejected, match=message):
        ingest.accept(make(data_root), channel="upload", device_id=None, source="uploader-1")
    with db.session() as session:
        rejected = session.scalars(select(RejectedMessage)).one()
        assert message in rejected.reason and rejected.channel == "upload" and rejected.source == "uploader-1"
        assert queries.counts(session)["images"] == 1
        assert ingest.store.read(session.get(Image, kept.image_id).path) == rg1_dicom.read_bytes()


def test_oversize_bytes_are_refused_before_parsing(setup) -> None:
    _, ingest, _ = setup
    ingest.max_bytes = 1000
    with pytest.raises(IngestRejected, match="more than the limit of 1000") as info:
        ingest.accept(b"\0" * 1001, channel="upload", device_id=None)
    assert info.value.too_large


def test_images_still_queued_are_requeued_after_a_restart(setup, rg1_dicom: Path) -> None:
    db, ingest, _ = setup
    accepted = ingest.accept(rg1_dicom.read_bytes(), channel="dicom", device_id=None)
    fresh_queue = InProcessQueue()  # the in-memory queue of a restarted process is empty
    assert requeue_pending(db, fresh_queue) == 1 and fresh_queue.enqueued == 1
    received: list[int] = []
    done = threading.Event()

    def handler(image_ids: list[int]) -> None:
        received.extend(image_ids)
        done.set()

    worker_queue = InProcessQueue(handler)
    requeue_pending(db, worker_queue)
    assert done.wait(5) and received == [accepted.image_id]
    worker_queue.close()

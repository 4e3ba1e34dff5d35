"""The ingest-side query functions of ``covidet.store.queries`` on both backends (SQLite, PostgreSQL):
what :class:`covidet.ingest.service.ImageIngest` relies on when it records an accepted image."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from covidet.store import Database, queries
from covidet.store.models import Image, ImageStatus

SOP_UID = "1.2.826.0.1.3680043.8.498.1001"


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


def new_image(study_id: int, sop_uid: str = SOP_UID, sha256: str = "a" * 64) -> Image:
    return Image(
        sop_instance_uid=sop_uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        content_sha256=sha256,
        path=f"{sha256[:2]}/{sha256}.dcm",
        size_bytes=1234,
        media_type="application/dicom",
        study_id=study_id,
        status=ImageStatus.QUEUED.value,
    )


def make_study(db: Database) -> int:
    with db.session(write=True) as session:
        patient = queries.get_or_create_patient(session, "P-100", name="Doe^Jane")
        return queries.get_or_create_study(session, "1.2.826.0.1.3680043.8.498.2001", patient).id


def test_add_image_sets_the_id_and_the_row_is_found_by_its_sop_instance_uid(db: Database) -> None:
    study_id = make_study(db)
    with db.session(write=True) as session:
        image = queries.add_image(session, new_image(study_id))
        image_id = image.id  # set by the flush, before the commit
        assert isinstance(image_id, int)
    with db.session() as session:
        found = queries.image_by_sop_instance_uid(session, SOP_UID)
        assert found is not None and found.id == image_id
        assert (found.study_id, found.status, found.size_bytes) == (study_id, "queued", 1234)
        assert found.study.patient.patient_key == "P-100"
        assert queries.image_by_sop_instance_uid(session, SOP_UID + ".9") is None


def test_add_image_refuses_a_stored_sop_instance_uid_and_writes_nothing(db: Database) -> None:
    """The service turns this IntegrityError into a duplicate (a concurrent association stored it)."""
    study_id = make_study(db)
    with db.session(write=True) as session:
        first_id = queries.add_image(session, new_image(study_id)).id
    with pytest.raises(IntegrityError), db.session(write=True) as session:
        queries.add_image(session, new_image(study_id, sha256="b" * 64))
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 1
        stored = queries.image_by_sop_instance_uid(session, SOP_UID)
        assert stored is not None and (stored.id, stored.content_sha256) == (first_id, "a" * 64)


def test_counts_has_the_keys_of_covidet_stats_in_order(db: Database) -> None:
    """``covidet stats --json`` prints this dict as it is: its keys, their order and the priorities."""
    study_id = make_study(db)
    with db.session(write=True) as session:
        queries.add_image(session, new_image(study_id)).priority = "urgent"
        queries.add_rejected(session, channel="mqtt", reason="not JSON", source="covidet/devices/9/vitals")
    with db.session() as session:
        counts = queries.counts(session)
    assert list(counts) == [
        "images",
        "studies",
        "patients",
        "vitals",
        "rejected_messages",
        "devices",
        "inferences",
        "failed_inferences",
        "priorities",
    ]
    assert counts == {
        "images": 1,
        "studies": 1,
        "patients": 1,
        "vitals": 0,
        "rejected_messages": 1,
        "devices": 0,
        "inferences": 0,
        "failed_inferences": 0,
        "priorities": {"urgent": 1, "high": 0, "routine": 0},
    }

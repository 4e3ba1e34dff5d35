"""The store functions the analysis worker, the reports and the archive call instead of their own SQL
(issue 20): inference attempts and results, triage records and alerts, the images still to do, the
newest signed review, and the series-UID back-fill; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from covidet.domain import Assessment, Box, Finding, Label
from covidet.store import Database, Image, ImageStatus, queries
from covidet.store import analysis_queries as rows
from covidet.store.account_queries import create_user
from covidet.store.archive_queries import images_without_series_uid, record_series_uids
from covidet.store.models import (
    Alert,
    Inference,
    InferenceStatus,
    Review,
    ReviewStatus,
    TriageRecord,
    VitalSignRecord,
)
from covidet.store.review_store import newest_signed_review_id
from covidet.store.study_queries import latest_triage

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def db(database_url: str):
    database = Database(database_url)
    yield database
    database.dispose()


def _image(
    db: Database,
    n: int,
    *,
    patient: str = "P-1",
    study: str = "1.2.3.1",
    status: str = ImageStatus.QUEUED.value,
    received_at: datetime = T0,
    media_type: str = "application/dicom",
) -> tuple[int, int]:
    """A stored image row; returns (image id, patient id)."""
    with db.session(write=True) as session:
        owner = queries.get_or_create_patient(session, patient)
        parent = queries.get_or_create_study(session, study, owner)
        image = Image(
            sop_instance_uid=f"1.2.3.4.{n}",
            content_sha256=f"{n:064x}",
            path=f"ab/{n:064x}.dcm",
            size_bytes=100,
            media_type=media_type,
            study_id=parent.id,
            status=status,
            received_at=received_at,
            columns=2000,
        )
        session.add(image)
        session.flush()
        return image.id, owner.id


FINDINGS = [Finding(Box(10.0, 20.0, 300.0, 400.0), Label.COVID19, 0.8)]
ASSESSMENT = Assessment(
    label=Label.COVID19,
    probabilities={Label.COVID19: 0.8, Label.PNEUMONIA: 0.1, Label.NORMAL: 0.1},
    threshold=0.4,
)


def test_an_inference_is_started_counted_finished_and_not_started_again(db: Database) -> None:
    image_id, patient_id = _image(db, 1)
    with db.session(write=True) as session:
        assert rows.start_inference(session, 999, model_name="m", model_version="1") is None
        job = rows.start_inference(session, image_id, model_name="m", model_version="1")
    assert isinstance(job, rows.StartedInference)
    assert (job.image_id, job.patient_id, job.path, job.attempt) == (
        image_id,
        patient_id,
        "ab/" + "0" * 63 + "1.dcm",
        1,
    )
    with db.session(write=True) as session:
        rows.record_inference_failure(session, job.inference_id, image_id, "x" * 5000, final=False)
    with db.session() as session:
        failed = session.get(Inference, job.inference_id)
        assert failed.status == InferenceStatus.FAILED.value and len(failed.error) == rows.MAX_ERROR_CHARS
        assert session.get(Image, image_id).status == ImageStatus.QUEUED.value  # a retry follows
    # The second attempt reuses the (image, model) row and counts it; another model version gets its own.
    with db.session(write=True) as session:
        again = rows.start_inference(session, image_id, model_name="m", model_version="1")
        other = rows.start_inference(session, image_id, model_name="m", model_version="2")
    assert isinstance(again, rows.StartedInference) and again.inference_id == job.inference_id
    assert again.attempt == 2
    assert isinstance(other, rows.StartedInference) and other.inference_id != job.inference_id
    with db.session(write=True) as session:
        rows.record_inference_result(
            session,
            job.inference_id,
            findings=FINDINGS,
            assessment=ASSESSMENT,
            decision_rule="max-score-v1",
            read_seconds=0.5,
            detect_seconds=1.5,
        )
    with db.session() as session:
        done = session.get(Inference, job.inference_id)
        assert done.status == InferenceStatus.SUCCEEDED.value and done.error is None
        assert (done.label, done.threshold, done.decision_rule) == ("covid19", 0.4, "max-score-v1")
        assert rows.inference_findings(done) == FINDINGS
        assert rows.inference_assessment(done) == ASSESSMENT
        assert session.get(Image, image_id).status == ImageStatus.ANALYSED.value
        assert rows.get_inference(session, job.inference_id) is done
        assert rows.get_inference(session, 999) is None
    # A redelivered job finds the succeeded inference and starts nothing.
    with db.session(write=True) as session:
        assert rows.start_inference(session, image_id, model_name="m", model_version="1") == job.inference_id
    with pytest.raises(LookupError, match="no inference with id 999"), db.session(write=True) as session:
        rows.record_inference_result(
            session,
            999,
            findings=[],
            assessment=ASSESSMENT,
            decision_rule="r",
            read_seconds=0,
            detect_seconds=0,
        )


def test_a_final_failure_and_mark_image_failed_fail_the_image(db: Database) -> None:
    first, _ = _image(db, 1)
    second, _ = _image(db, 2)
    with db.session(write=True) as session:
        job = rows.start_inference(session, first, model_name="m", model_version="1")
        assert isinstance(job, rows.StartedInference)
        rows.record_inference_failure(session, job.inference_id, first, "unreadable", final=True)
        rows.mark_image_failed(session, second)
        rows.mark_image_failed(session, 999)  # gone: nothing to do
    with db.session() as session:
        assert session.get(Image, first).status == ImageStatus.FAILED.value
        assert session.get(Image, second).status == ImageStatus.FAILED.value


def test_queued_recent_analysed_and_newest_analysed_of_study(db: Database) -> None:
    queued_b, _ = _image(db, 2)
    queued_a, _ = _image(db, 1, status=ImageStatus.QUEUED.value)
    old, patient_id = _image(db, 3, status=ImageStatus.ANALYSED.value, received_at=T0 - timedelta(days=2))
    new, _ = _image(db, 4, status=ImageStatus.ANALYSED.value, received_at=T0)
    _image(db, 5, patient="P-2", study="1.2.3.2", status=ImageStatus.ANALYSED.value)
    with db.session() as session:
        assert rows.queued_image_ids(session) == sorted([queued_a, queued_b])
        assert rows.analysed_image_ids_of_patient(session, patient_id, since=T0 - timedelta(hours=24)) == [
            new
        ]
        assert sorted(
            rows.analysed_image_ids_of_patient(session, patient_id, since=T0 - timedelta(days=3))
        ) == [
            old,
            new,
        ]
        assert rows.newest_analysed_image_of_study(session, "1.2.3.1") == new
        assert rows.newest_analysed_image_of_study(session, "9.9") is None


def test_vitals_in_a_window_by_ids_and_as_domain_values(db: Database) -> None:
    _, patient_id = _image(db, 1)
    with db.session(write=True) as session:
        for minutes, spo2 in ((90, 97.0), (20, 91.0), (5, 88.0)):
            session.add(
                VitalSignRecord(
                    patient_id=patient_id, measured_at=T0 - timedelta(minutes=minutes), spo2_percent=spo2
                )
            )
    with db.session() as session:
        window = rows.vital_rows_since(session, patient_id, T0 - timedelta(minutes=30))
        assert [r.spo2_percent for r in window] == [91.0, 88.0]
        ids = [r.id for r in window]
        assert [r.id for r in rows.vital_rows_by_ids(session, list(reversed(ids)))] == ids
        assert rows.vital_rows_by_ids(session, []) == []
        vital = rows.as_vital_sign(window[-1], "P-1")
    assert (vital.patient_id, vital.measured_at, vital.spo2_percent) == (
        "P-1",
        T0 - timedelta(minutes=5),
        88.0,
    )
    assert vital.temperature_c is None


def test_record_triage_sets_the_priority_and_an_alert_is_kept(db: Database) -> None:
    image_id, patient_id = _image(db, 1)
    with db.session(write=True) as session:
        job = rows.start_inference(session, image_id, model_name="m", model_version="1")
        assert isinstance(job, rows.StartedInference)
        image = session.get(Image, image_id)
        triage_id = rows.record_triage(
            session,
            image,
            inference_id=job.inference_id,
            priority="urgent",
            rule="news2",
            news2_partial=7,
            reasons=["SpO2 88%"],
            vital_sign_ids=[],
            now=T0,
        )
        alert_id = rows.add_alert(
            session,
            image_id=image_id,
            patient_id=patient_id,
            triage_id=triage_id,
            priority="urgent",
            reasons=["SpO2 88%"],
        )
    with db.session() as session:
        image = session.get(Image, image_id)
        assert (image.priority, image.priority_updated_at) == ("urgent", T0)
        record = latest_triage(session, image_id)
        assert record is not None and record.id == triage_id
        assert (record.rule, record.news2_partial, record.reasons, record.inference_id) == (
            "news2",
            7,
            ["SpO2 88%"],
            job.inference_id,
        )
        alert = session.scalars(select(Alert)).one()
        assert (alert.id, alert.triage_id, alert.patient_id, alert.reasons) == (
            alert_id,
            triage_id,
            patient_id,
            ["SpO2 88%"],
        )
        assert len(session.scalars(select(TriageRecord)).all()) == 1


def test_newest_signed_review_id(db: Database) -> None:
    image_id, _ = _image(db, 1)
    with db.session(write=True) as session:
        user = create_user(session, "rad1", password_hash="x", role="radiologist")
        draft = Review(image_id=image_id, reviewer_id=user.id, status=ReviewStatus.DRAFT.value)
        early = Review(
            image_id=image_id,
            reviewer_id=user.id,
            status=ReviewStatus.SIGNED.value,
            signed_at=T0,
            label="normal",
        )
        late = Review(
            image_id=image_id,
            reviewer_id=user.id,
            status=ReviewStatus.SIGNED.value,
            signed_at=T0 + timedelta(minutes=5),
            label="covid19",
        )
        session.add_all([draft, early, late])
        session.flush()
        late_id = late.id
    with db.session() as session:
        assert newest_signed_review_id(session, image_id) == late_id
        assert newest_signed_review_id(session, 999) is None


def test_record_series_uids_keeps_the_header_uid_or_derives_one(db: Database) -> None:
    read, _ = _image(db, 1)
    unreadable, _ = _image(db, 2)
    with db.session() as session:
        assert [i for i, _ in images_without_series_uid(session)] == [read, unreadable]
    with db.session(write=True) as session:
        record_series_uids(session, {read: "1.2.3.9", unreadable: None, 999: "1.2"})
    with db.session() as session:
        assert session.get(Image, read).series_instance_uid == "1.2.3.9"
        # Unreadable: the UID an upload gets, derived from the content hash (the same every time).
        derived = generate_uid(entropy_srcs=["covidet-upload-series", f"{2:064x}"])
        assert session.get(Image, unreadable).series_instance_uid == derived
        assert images_without_series_uid(session) == []

"""The study and inference queries behind the web pages (the image viewer, the diagnostic viewer and
the model page), on both backends: a study by its UID, a patient's other studies, the error of an
image's newest failed analysis, and the models in use."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from covidet.store import Database
from covidet.store import study_queries as sq
from covidet.store.models import Image, Inference, Patient, Study


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


def _study(session, patient: Patient, uid: str, when: datetime | None = None) -> Study:
    study = Study(study_instance_uid=uid, patient_id=patient.id, study_datetime=when)
    session.add(study)
    session.flush()
    return study


def _image(session, study: Study, uid: str) -> Image:
    image = Image(
        sop_instance_uid=uid,
        content_sha256=uid.replace(".", "0").ljust(64, "0")[:64],
        path=f"{uid}.dcm",
        size_bytes=1,
        media_type="application/dicom",
        study_id=study.id,
    )
    session.add(image)
    session.flush()
    return image


def _inference(session, image: Image, status: str, model: str = "m", version: str = "1", error=None) -> None:
    session.add(
        Inference(image_id=image.id, model_name=model, model_version=version, status=status, error=error)
    )
    session.flush()


def test_study_by_uid_and_the_patients_other_studies_newest_first(db: Database) -> None:
    with db.session(write=True) as session:
        alice = Patient(patient_key="P-1", name="Doe^Alice")
        bob = Patient(patient_key="P-2")
        session.add_all([alice, bob])
        session.flush()
        current = _study(session, alice, "1.2.1", datetime(2026, 2, 1, tzinfo=UTC))
        undated = _study(session, alice, "1.2.2")
        january = _study(session, alice, "1.2.3", datetime(2026, 1, 1, tzinfo=UTC))
        march_a = _study(session, alice, "1.2.4", datetime(2026, 3, 1, tzinfo=UTC))
        march_b = _study(session, alice, "1.2.5", datetime(2026, 3, 1, tzinfo=UTC))
        _study(session, bob, "1.2.6", datetime(2026, 4, 1, tzinfo=UTC))
        ids = {name: s.id for name, s in locals().items() if isinstance(s, Study)}
    with db.session() as session:
        found = sq.get_study_by_uid(session, "1.2.1")
        assert found is not None and found.id == ids["current"]
        assert found.patient.patient_key == "P-1" and found.patient.name == "Doe^Alice"
        assert sq.get_study_by_uid(session, "1.2.999") is None
        others = sq.other_studies(session, found.patient_id, exclude_study_id=found.id)
        # Newest study date first, the same date by id (newest first), undated studies last; never
        # the excluded study nor another patient's.
        assert [s.id for s in others] == [ids["march_b"], ids["march_a"], ids["january"], ids["undated"]]
        assert sq.other_studies(session, found.patient_id + 1000, exclude_study_id=found.id) == []


def test_latest_failure_is_the_newest_failed_inference_of_that_image(db: Database) -> None:
    with db.session(write=True) as session:
        patient = Patient(patient_key="P-1")
        session.add(patient)
        session.flush()
        study = _study(session, patient, "1.3.1")
        failing, clean, other = (_image(session, study, f"1.3.1.{n}") for n in (1, 2, 3))
        # One inference per model version and image (a unique constraint): four versions here.
        _inference(session, failing, "failed", version="1", error="first error")
        _inference(session, failing, "succeeded", version="2")
        _inference(session, failing, "failed", version="3", error="second error")
        _inference(session, failing, "running", version="4")
        _inference(session, clean, "succeeded")
        _inference(session, other, "failed", error="other image")
        image_ids = failing.id, clean.id, other.id
    with db.session() as session:
        assert sq.latest_failure(session, image_ids[0]) == "second error"
        assert sq.latest_failure(session, image_ids[1]) is None
        assert sq.latest_failure(session, image_ids[2]) == "other image"
        assert sq.latest_failure(session, 10_000) is None


def test_models_in_use_counts_successful_inferences_per_model_version(db: Database) -> None:
    with db.session() as session:
        assert sq.models_in_use(session) == []
    with db.session(write=True) as session:
        patient = Patient(patient_key="P-1")
        session.add(patient)
        session.flush()
        study = _study(session, patient, "1.4.1")
        images = [_image(session, study, f"1.4.1.{n}") for n in range(4)]
        for image in images[:3]:
            _inference(session, image, "succeeded", "detector", "2.0")
        _inference(session, images[0], "succeeded", "detector", "1.0")
        _inference(session, images[3], "succeeded", "baseline", "1.0")
        _inference(session, images[3], "failed", "broken", "1.0", error="boom")
        _inference(session, images[3], "running", "busy", "1.0")
    with db.session() as session:
        assert sq.models_in_use(session) == [
            sq.ModelUsage("baseline", "1.0", 1),
            sq.ModelUsage("detector", "1.0", 1),
            sq.ModelUsage("detector", "2.0", 3),
        ]

"""covidet as a DICOM archive: the X-rays and the SRs it keeps, as DICOMweb and Q/R will serve them.

Real parts: pydicom-data's chest radiograph accepted through covidet's ingest into SQLite, the AI result
written as the worker writes it (fixture of ``tests/reports/test_dicom_sr.py``), SRs built by highdicom
and read back with highdicom; the converted upload read back with pydicom.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import highdicom as hd
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

from covidet.archive import (
    archive_ai_sr,
    archive_review_sr,
    backfill_series_uids,
    instance_dataset,
    instance_part10,
)
from covidet.store import archive_queries as aq
from covidet.store.models import DicomObject, Image
from tests.reports.test_dicom_sr import Env, _analysed_png, _sign_review, env  # noqa: F401


def test_ai_sr_is_kept_in_the_study_once_and_reads_back(env: Env) -> None:  # noqa: F811
    first = archive_ai_sr(env.db, env.store, env.image_id)
    again = archive_ai_sr(env.db, env.store, env.image_id)
    assert first is not None and again is not None
    assert again.sop_instance_uid == first.sop_instance_uid
    with env.db.session() as session:
        assert session.query(DicomObject).count() == 1
        image = session.get(Image, env.image_id)
        study_uid = image.study.study_instance_uid
        held = aq.instances(session, study_uid=study_uid)
    assert [r.kind for r in held] == ["image", "ai-sr"]
    xray, sr = held
    assert xray.series_instance_uid == str(dcmread(env.store.path(xray.path)).SeriesInstanceUID)
    assert sr.modality == "SR" and sr.series_instance_uid != xray.series_instance_uid
    document = hd.sr.srread(DicomBytesIO(instance_part10(env.db, env.store, sr)))
    assert document.StudyInstanceUID == study_uid
    assert (
        document.CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence[0]["ReferencedSOPSequence"][0]
        .ReferencedSOPInstanceUID
        == xray.sop_instance_uid
    )
    assert "NOT FOR CLINICAL USE" in document.SeriesDescription


def test_upload_is_served_as_a_dx_object_with_its_uids_and_gets_an_sr(
    env: Env,  # noqa: F811
    tmp_path: Path,
    rg1_dicom: Path,
) -> None:
    image_id = _analysed_png(env, tmp_path, rg1_dicom)
    with env.db.session() as session:
        image = session.get(Image, image_id)
        record = aq.instances(session, study_uid=image.study.study_instance_uid)[0]
    assert record.media_type == "image/png" and record.modality == "DX"
    first, second = (instance_part10(env.db, env.store, record) for _ in range(2))
    assert first == second  # the same upload is always the same instance
    dataset = dcmread(DicomBytesIO(first))
    assert dataset.SOPInstanceUID == record.sop_instance_uid
    assert dataset.SeriesInstanceUID == record.series_instance_uid
    assert dataset.StudyInstanceUID == record.study_instance_uid
    assert dataset.PatientID == "P-PNG"
    assert (dataset.Rows, dataset.Columns) == (1955, 1841)
    assert "PixelData" not in instance_dataset(env.db, env.store, record, pixels=False)
    sr = archive_ai_sr(env.db, env.store, image_id)
    assert sr is not None
    with env.db.session() as session:
        sr_record = aq.instance_by_uid(session, sr.sop_instance_uid)
    document = hd.sr.srread(DicomBytesIO(instance_part10(env.db, env.store, sr_record)))
    evidence = document.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == record.sop_instance_uid


def test_signed_review_sr_is_kept_beside_the_ai_sr(env: Env) -> None:  # noqa: F811
    assert archive_ai_sr(env.db, env.store, env.image_id) is not None
    review_id = _sign_review(env)
    kept = archive_review_sr(env.db, env.store, review_id)
    assert kept is not None and kept.kind == "review-sr"
    with env.db.session() as session:
        kinds = sorted(r.kind for r in aq.instances(session, study_ids=[kept.study_id]))
        series = aq.series_of_studies(session, [kept.study_id])
    assert kinds == ["ai-sr", "image", "review-sr"]
    assert len(series) == 3
    assert archive_review_sr(env.db, env.store, 999) is None


def test_study_search_matches_dicom_keys(env: Env, tmp_path: Path, rg1_dicom: Path) -> None:  # noqa: F811
    archive_ai_sr(env.db, env.store, env.image_id)
    _analysed_png(env, tmp_path, rg1_dicom)
    with env.db.session() as session:
        every = aq.search_studies(session, aq.StudyQuery())
        assert len(every) == 2
        dicom_study = next(s for s in every if s.patient_key != "P-PNG")
        assert dicom_study.modalities == ("CR", "SR")
        assert dicom_study.series_count == 2 and dicom_study.instance_count == 2
        assert [s.patient_key for s in aq.search_studies(session, aq.StudyQuery(patient_id="P-P*"))] == [
            "P-PNG"
        ]
        assert aq.search_studies(session, aq.StudyQuery(patient_id="P-P")) == []
        assert [s.study_id for s in aq.search_studies(session, aq.StudyQuery(modality="SR"))] == [
            dicom_study.study_id
        ]
        uid_match = aq.search_studies(session, aq.StudyQuery(study_uids=(dicom_study.study_instance_uid,)))
        assert [s.study_id for s in uid_match] == [dicom_study.study_id]
        assert aq.search_studies(session, aq.StudyQuery(date_to=date(1900, 1, 1))) == []
        assert len(aq.search_studies(session, aq.StudyQuery(), limit=1)) == 1
        assert len(aq.search_studies(session, aq.StudyQuery(), limit=1, offset=1)) == 1
        assert aq.search_studies(session, aq.StudyQuery(), offset=2) == []


def test_dicom_wildcards_are_escaped_for_sql() -> None:
    assert aq.dicom_like("A_1%*?") == ("A\\_1\\%%_", True)
    assert aq.dicom_like("PLAIN") == ("PLAIN", False)


def test_series_uids_of_earlier_images_are_filled_from_their_headers(env: Env) -> None:  # noqa: F811
    with env.db.session(write=True) as session:
        image = session.get(Image, env.image_id)
        expected = image.series_instance_uid
        image.series_instance_uid = None
    assert expected
    assert backfill_series_uids(env.db, env.store) == 1
    assert backfill_series_uids(env.db, env.store) == 0
    with env.db.session() as session:
        assert session.get(Image, env.image_id).series_instance_uid == expected


def test_signed_review_sr_is_kept_and_forwarded_to_the_pacs(env: Env, tmp_path: Path) -> None:  # noqa: F811
    """A real PACS (a private Orthanc) receives the review SR when a PACS is configured."""
    from covidet.archive import publish_review_sr
    from covidet.config import Settings
    from tests.servers import start_orthanc

    review_id = _sign_review(env)
    orthanc = start_orthanc()
    try:
        settings = Settings(
            home=tmp_path / "home", pacs_host="127.0.0.1", pacs_port=orthanc.port, pacs_ae_title="ORTHANC"
        )
        kept = publish_review_sr(env.db, env.store, settings, review_id)
        assert kept is not None and kept.kind == "review-sr"
        assert orthanc.instance_count() == 1
        assert publish_review_sr(env.db, env.store, Settings(home=tmp_path / "h2"), review_id) is not None
        assert orthanc.instance_count() == 1  # no PACS configured: kept only
    finally:
        orthanc.stop()


def test_ai_sr_of_a_header_without_type_2_patient_attributes(env: Env, data_root: Path) -> None:  # noqa: F811
    """The simulator's DX objects (like many converters') carry no PatientBirthDate, PatientSex or
    ReferringPhysicianName: the SR must still be made (they are Type 2 in the SR, present and empty)."""
    from datetime import UTC, datetime

    from covidet.imaging.dicom_writer import dicom_bytes, xray_to_dicom
    from covidet.store.models import FindingRecord, Inference

    jpeg = next(iter(sorted((data_root / "images").rglob("*.jp*g"))))
    dataset = xray_to_dicom(jpeg, patient_id="SIM-1", patient_name="SIMULATED^SIM-1")
    assert "PatientBirthDate" not in dataset
    accepted = env.ingest.accept(dicom_bytes(dataset), channel="dicom", device_id=None)
    now = datetime.now(UTC)
    with env.db.session(write=True) as session:
        inference = Inference(
            image_id=accepted.image_id,
            model_name="covidet-frcnn-r101",
            model_version="test-1",
            status="succeeded",
            attempts=1,
            label="covid19",
            probabilities={"covid19": 0.7, "pneumonia": 0.2, "normal": 0.1},
            started_at=now,
            finished_at=now,
        )
        inference.findings = [FindingRecord(label="covid19", score=0.7, x1=10, y1=10, x2=100, y2=120)]
        session.add(inference)
        session.get(Image, accepted.image_id).status = "analysed"
    kept = archive_ai_sr(env.db, env.store, accepted.image_id)
    assert kept is not None
    with env.db.session() as session:
        record = aq.instance_by_uid(session, kept.sop_instance_uid)
    document = hd.sr.srread(DicomBytesIO(instance_part10(env.db, env.store, record)))
    assert document.PatientID == "SIM-1" and document.PatientBirthDate == ""

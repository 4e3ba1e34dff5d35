"""The receiver's Query/Retrieve SCP against dcmtk's real clients: ``findscu`` (Patient and Study
Root, every level, wildcards, date ranges, cancel), ``getscu`` (a study's X-ray and AI SR back into a
folder), ``movescu`` to a dcmtk ``storescp`` registered as a destination and to an unknown AE. The
archive is real: X-rays accepted through covidet's ingest into SQLite or PostgreSQL, a PNG upload
served as DX, the AI SR kept by :func:`covidet.archive.archive_ai_sr` from an AI result written as
the worker writes it. Every request's audit rows are checked.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid
from sqlalchemy import event as sa_event
from sqlalchemy import select

from covidet.archive import archive_ai_sr, instance_part10
from covidet.config import Settings
from covidet.ingest.dicom_scp import DicomReceiver
from covidet.ingest.qr import QueryRetrieve
from covidet.ingest.qr.keys import IdentifierError, QueryKeys, date_range, parse_request
from covidet.ingest.qr.matches import TooManyMatches, find_matches
from covidet.ingest.service import ImageIngest
from covidet.ingest.storage import ImageStore
from covidet.store import archive_queries as aq
from covidet.store import queries
from covidet.store.db import Database
from covidet.store.models import AuditEvent, Image, Patient, RejectedMessage, Study
from covidet.worker.queue import InProcessQueue
from tests.api.conftest import seed_image
from tests.ingest.conftest import MODALITY_AE, dcmtk, dcmtk_env, encode_file, storescu
from tests.reports.test_dicom_sr import _analysed_png
from tests.servers import free_port, start_orthanc, wait_for_port

WORKSTATION_AE = "WS1"
RG1_STUDY = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"
RG1_SERIES = "1.3.6.1.4.1.5962.1.3.9.1.20040826185059.5457"
FINDINGS = (("covid19", 0.91, (300.0, 400.0, 900.0, 1200.5)),)  # the AI result's box on RG1


@dataclass
class Archive:
    """A running receiver over an archive of three studies (see :func:`archive`)."""

    db: Database
    store: ImageStore
    receiver: DicomReceiver
    workstation_id: int
    xray_uid: str  # RG1's SOP Instance UID (study RG1_STUDY, 2004-08-26, patient 9RG1)
    sr_uid: str  # the AI SR kept in RG1_STUDY
    doe_study: str  # a second X-ray: patient P-2 "Doe^Jane", 2020-03-15, accession ACC-2
    png_study: str  # a PNG upload of patient P-PNG, served as DX

    @property
    def port(self) -> int:
        return self.receiver.port


def _doe_copy(rg1_dicom: Path, target: Path) -> Path:
    """RG1 as another patient's study (new UIDs, date 2020-03-15, accession ACC-2)."""
    ds = dcmread(rg1_dicom)
    ds.PatientID, ds.PatientName, ds.AccessionNumber = "P-2", "Doe^Jane", "ACC-2"
    ds.StudyDate, ds.StudyTime = "20200315", "101500"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return target


@contextlib.contextmanager
def _start(tmp_path: Path, url: str, rg1_dicom: Path, **qr_options: object) -> Iterator[Archive]:
    db = Database(url)
    with db.session(write=True) as session:
        queries.create_device(session, "xray-room-1", "modality", ae_title=MODALITY_AE)
        workstation = queries.create_device(session, "reading-ws", "workstation", ae_title=WORKSTATION_AE)
    store = ImageStore(tmp_path / "store")
    queue = InProcessQueue()
    ingest = ImageIngest(db, store, queue, max_bytes=200 * 1024 * 1024, max_pixels=50_000_000)
    # RG1 accepted through the real ingest with an AI result written as the worker writes it, its SR
    # kept as the analysis keeps it; the PNG upload with its AI result: the helpers of the API and SR
    # tests (they use db, store and ingest only).
    parts = SimpleNamespace(db=db, store=store, ingest=ingest)
    xray = seed_image(parts, rg1_dicom.read_bytes(), patient_key="9RG1", findings=FINDINGS)  # type: ignore[arg-type]
    assert archive_ai_sr(db, store, xray.image_id) is not None
    doe = ingest.accept(
        _doe_copy(rg1_dicom, tmp_path / "doe.dcm").read_bytes(), channel="dicom", device_id=None
    )
    upload_id = _analysed_png(parts, tmp_path, rg1_dicom)  # type: ignore[arg-type]
    with db.session() as session:
        xray_uid = session.get(Image, xray.image_id).sop_instance_uid
        (sr,) = [r for r in aq.instances(session, study_uid=RG1_STUDY) if r.kind == "ai-sr"]
        doe_study = session.get(Image, doe.image_id).study.study_instance_uid
        png_study = session.get(Image, upload_id).study.study_instance_uid
    if isinstance(settings := qr_options.pop("settings", None), Settings):  # as `covidet dicom-scp` does
        receiver = DicomReceiver.from_settings(settings, db, ingest, host="127.0.0.1", port=0)
    else:
        service = QueryRetrieve(db, store, **qr_options)  # type: ignore[arg-type]
        receiver = DicomReceiver(db, ingest, port=0, query_retrieve=service)
    receiver.start()
    try:
        yield Archive(
            db, store, receiver, workstation.device_id, xray_uid, sr.sop_instance_uid, doe_study, png_study
        )
    finally:
        receiver.stop(timeout=2)
        queue.close()
        db.dispose()


@pytest.fixture
def archive(tmp_path: Path, rg1_dicom: Path) -> Iterator[Archive]:
    """Over SQLite."""
    with _start(tmp_path, f"sqlite:///{tmp_path / 'covidet.db'}", rg1_dicom) as started:
        yield started


@pytest.fixture
def archive_on_each_backend(tmp_path: Path, rg1_dicom: Path, database_url: str) -> Iterator[Archive]:
    """Over SQLite and over PostgreSQL (the matching is SQL: LIKE, date bounds, NULL ordering)."""
    with _start(tmp_path, database_url, rg1_dicom) as started:
        yield started


def run(tool: str, port: int, *args: str, aet: str = WORKSTATION_AE, debug: bool = False):
    """A dcmtk client against the receiver (verbose, or with ``debug`` the DIMSE messages with their
    Error Comments; output merged)."""
    return subprocess.run(
        [dcmtk(tool), "-d" if debug else "-v", *args, "-aet", aet, "-aec", "COVIDET", "127.0.0.1", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dcmtk_env(),
        timeout=60,
    )


def keys(**pairs: str) -> list[str]:
    return [arg for key, value in pairs.items() for arg in ("-k", f"{key}={value}" if value else key)]


def findscu(archive: Archive, folder: Path, *args: str, aet: str = WORKSTATION_AE, debug: bool = False):
    """findscu with ``--extract``: every response identifier written to ``folder``; returns the run and
    the identifiers in order."""
    folder.mkdir()
    done = run("findscu", archive.port, "-X", "-od", str(folder), *args, aet=aet, debug=debug)
    return done, [dcmread(f) for f in sorted(folder.glob("rsp*.dcm"))]


def getscu(archive: Archive, folder: Path, *args: str, debug: bool = False):
    """getscu (Study Root) into ``folder`` (made here); returns the run and the received datasets."""
    folder.mkdir(exist_ok=True)
    done = run("getscu", archive.port, "-S", "-od", str(folder), *args, debug=debug)
    return done, [dcmread(f) for f in sorted(folder.iterdir())]


def audit_rows(archive: Archive, action: str) -> list[AuditEvent]:
    with archive.db.session() as session:
        return list(
            session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))
        )


# ------------------------------------------------------------------------------------------ C-FIND


def test_findscu_study_root_study_level_wildcards_and_date_ranges(
    archive_on_each_backend: Archive, tmp_path: Path
) -> None:
    archive = archive_on_each_backend
    asked = keys(
        QueryRetrieveLevel="STUDY",
        PatientName="doe*",
        StudyInstanceUID="",
        StudyDate="",
        ModalitiesInStudy="",
        AccessionNumber="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
    )
    done, found = findscu(archive, tmp_path / "doe", "-S", *asked)
    assert done.returncode == 0, done.stdout
    assert [(f.StudyInstanceUID, f.PatientName, f.StudyDate, f.AccessionNumber) for f in found] == [
        (archive.doe_study, "Doe^Jane", "20200315", "ACC-2")
    ]
    assert (found[0].NumberOfStudyRelatedSeries, found[0].NumberOfStudyRelatedInstances) == (1, 1)
    assert found[0].RetrieveAETitle == "COVIDET" and "PatientBirthDate" not in found[0]

    base = keys(QueryRetrieveLevel="STUDY", StudyInstanceUID="", ModalitiesInStudy="")
    done, found = findscu(archive, tmp_path / "range", "-S", *base, *keys(StudyDate="20000101-20101231"))
    assert [f.StudyInstanceUID for f in found] == [RG1_STUDY], done.stdout
    assert list(found[0].ModalitiesInStudy) == ["CR", "SR"]
    _, found = findscu(archive, tmp_path / "open", "-S", *base, *keys(StudyDate="20100101-"))
    assert archive.doe_study in [f.StudyInstanceUID for f in found] and RG1_STUDY not in [
        f.StudyInstanceUID for f in found
    ]
    _, found = findscu(archive, tmp_path / "sr", "-S", *base, *keys(ModalitiesInStudy="SR"))
    assert [f.StudyInstanceUID for f in found] == [RG1_STUDY]
    uid_list = f"{RG1_STUDY}\\{archive.png_study}"
    _, found = findscu(archive, tmp_path / "uids", "-S", *base, *keys(StudyInstanceUID=uid_list))
    assert sorted(f.StudyInstanceUID for f in found) == sorted([RG1_STUDY, archive.png_study])
    _, found = findscu(archive, tmp_path / "acc", "-S", *base, *keys(AccessionNumber="ACC-?"))
    assert [f.StudyInstanceUID for f in found] == [archive.doe_study]
    _, found = findscu(archive, tmp_path / "all", "-S", *base)
    assert len(found) == 3

    rows = audit_rows(archive, "dicom.find")
    assert len(rows) >= 7 and all(r.actor_device_id == archive.workstation_id for r in rows)
    assert rows[0].object_type == "study" and rows[0].object_id == archive.doe_study
    assert rows[0].ip == "127.0.0.1" and rows[0].details["calling_ae"] == WORKSTATION_AE


def test_findscu_patient_root_patient_series_and_image_levels(archive: Archive, tmp_path: Path) -> None:
    done, found = findscu(
        archive,
        tmp_path / "patients",
        "-P",
        *keys(
            QueryRetrieveLevel="PATIENT",
            PatientID="9RG*",
            PatientName="",
            NumberOfPatientRelatedStudies="",
            NumberOfPatientRelatedInstances="",
        ),
    )
    assert done.returncode == 0, done.stdout
    assert [(f.PatientID, str(f.PatientName)) for f in found] == [("9RG1", "CompressedSamples^RG1")]
    assert (found[0].NumberOfPatientRelatedStudies, found[0].NumberOfPatientRelatedInstances) == (1, 2)

    series_keys = keys(
        QueryRetrieveLevel="SERIES",
        PatientID="9RG1",
        StudyInstanceUID=RG1_STUDY,
        SeriesInstanceUID="",
        Modality="",
        NumberOfSeriesRelatedInstances="",
    )
    _, found = findscu(archive, tmp_path / "series", "-P", *series_keys)
    assert sorted((f.Modality, f.NumberOfSeriesRelatedInstances) for f in found) == [("CR", 1), ("SR", 1)]
    assert RG1_SERIES in [f.SeriesInstanceUID for f in found]
    _, found = findscu(
        archive,
        tmp_path / "sr-series",
        "-S",
        *keys(QueryRetrieveLevel="SERIES", StudyInstanceUID=RG1_STUDY, Modality="SR", SeriesInstanceUID=""),
    )
    assert [f.Modality for f in found] == ["SR"]
    sr_series = found[0].SeriesInstanceUID

    _, found = findscu(
        archive,
        tmp_path / "image-level",
        "-S",
        *keys(
            QueryRetrieveLevel="IMAGE",
            StudyInstanceUID=RG1_STUDY,
            SeriesInstanceUID=sr_series,
            SOPInstanceUID="",
            SOPClassUID="",
        ),
    )
    assert [(f.SOPInstanceUID, f.SOPClassUID) for f in found] == [
        (archive.sr_uid, "1.2.840.10008.5.1.4.1.1.88.34")
    ]

    # By SOP Instance UID alone (no study or series key): found through its study.
    _, found = findscu(
        archive, tmp_path / "by-sop", "-S", *keys(QueryRetrieveLevel="IMAGE", SOPInstanceUID=archive.sr_uid)
    )
    assert [(f.SOPInstanceUID, f.StudyInstanceUID, f.SeriesInstanceUID) for f in found] == [
        (archive.sr_uid, RG1_STUDY, sr_series)
    ]
    _, found = findscu(
        archive, tmp_path / "no-sop", "-S", *keys(QueryRetrieveLevel="IMAGE", SOPInstanceUID="1.2.3")
    )
    assert found == []

    # The PNG upload is a DX study.
    _, found = findscu(
        archive,
        tmp_path / "png",
        "-S",
        *keys(QueryRetrieveLevel="SERIES", StudyInstanceUID=archive.png_study, Modality=""),
    )
    assert [f.Modality for f in found] == ["DX"]
    patient_rows = [r for r in audit_rows(archive, "dicom.find") if r.object_type == "patient"]
    assert [r.object_id for r in patient_rows] == ["9RG1"]


def test_findscu_errors_warnings_limit_and_cancel(tmp_path: Path, rg1_dicom: Path) -> None:
    with _start(tmp_path, f"sqlite:///{tmp_path / 'limit.db'}", rg1_dicom, max_matches=2) as archive:
        done, found = findscu(
            archive, tmp_path / "broad", "-S", *keys(QueryRetrieveLevel="STUDY"), debug=True
        )
        assert "DIMSE Status                  : 0xa700: Refused: Out of resources" in done.stdout, done.stdout
        assert "[more than 2 study matches: narrow the query ] #  44, 1 ErrorComment" in done.stdout
        assert found == []

        done, _ = findscu(
            archive, tmp_path / "level", "-S", *keys(QueryRetrieveLevel="PATIENT", PatientID=""), debug=True
        )
        assert "DIMSE Status                  : 0xa900" in done.stdout, done.stdout
        assert "[PATIENT level is not part of the Study Root model" in done.stdout
        done, _ = findscu(
            archive,
            tmp_path / "date",
            "-S",
            *keys(QueryRetrieveLevel="STUDY", StudyDate="2020-03"),
            debug=True,
        )
        assert "DIMSE Status                  : 0xa900" in done.stdout, done.stdout
        assert "[StudyDate '2020-03' is not a date range YYYYMMDD-YYYYMMDD" in done.stdout

        # A key covidet does not match on: pending with warning 0xFF01, returned empty.
        done, found = findscu(
            archive,
            tmp_path / "warn",
            "-S",
            *keys(QueryRetrieveLevel="STUDY", PatientID="P-2", PatientBirthDate="19800101"),
        )
        assert "Pending: WarningUnsupportedOptionalKeys" in done.stdout, done.stdout
        assert [f.PatientID for f in found] == ["P-2"] and found[0].PatientBirthDate == ""
        statuses = [r.details.get("status") for r in audit_rows(archive, "dicom.find")]
        assert {"0xA700", "0xA900"} <= set(statuses), statuses


def _many_studies(db: Database, count: int) -> None:
    """``count`` more studies of one CR image each, recorded without files (C-FIND reads no file)."""
    with db.session(write=True) as session:
        patient = Patient(patient_key="P-MANY", name="Many^Studies")
        for index in range(count):
            study = Study(
                study_instance_uid=generate_uid(), patient=patient, study_datetime=datetime.now(UTC)
            )
            session.add(
                Image(
                    sop_instance_uid=generate_uid(),
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                    series_instance_uid=generate_uid(),
                    content_sha256=f"{index:064x}",
                    path=f"none/{index}.dcm",
                    size_bytes=1,
                    media_type="application/dicom",
                    modality="CR",
                    study=study,
                )
            )


def test_findscu_cancel_ends_the_matches(
    tmp_path: Path, rg1_dicom: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """findscu --cancel 1 sends C-CANCEL after the first response; the SCP, which checks for the
    cancel before each response, stops early with 0xFE00.

    C-CANCEL is a race by design: an SCP that has already handed every response to the network
    answers Success, which is what a quiet machine did with 600 fast matches. So each response here
    takes 20 ms to build (an archive whose database is across the network), 12 s for all 600: the
    cancel, sent right after the first response, arrives long before the last one.
    """
    from covidet.ingest.qr import find

    build = find.response_identifier

    def slow_archive(*args: object, **kwargs: object) -> Dataset:
        time.sleep(0.02)
        return build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(find, "response_identifier", slow_archive)
    with _start(tmp_path, f"sqlite:///{tmp_path / 'many.db'}", rg1_dicom) as archive:
        _many_studies(archive.db, 600)
        done, found = findscu(
            archive,
            tmp_path / "cancel",
            "-S",
            "--cancel",
            "1",
            *keys(QueryRetrieveLevel="STUDY", PatientID="P-MANY", StudyInstanceUID=""),
        )
    assert "Received Final Find Response (Cancel: MatchingTerminatedDueToCancelRequest)" in done.stdout, (
        done.stdout[-2000:]
    )
    assert 1 <= len(found) < 600


def test_only_registered_workstations_may_query(archive: Archive, tmp_path: Path) -> None:
    asked = keys(QueryRetrieveLevel="STUDY", StudyInstanceUID="")
    stranger, _ = findscu(archive, tmp_path / "stranger", "-S", *asked, aet="STRANGER")
    assert stranger.returncode != 0 and "Association Rejected" in stranger.stdout, stranger.stdout
    # A modality sends; it is not offered the query models.
    modality, found = findscu(archive, tmp_path / "modality", "-S", *asked, aet=MODALITY_AE)
    assert modality.returncode != 0 and found == [], modality.stdout
    assert "No Acceptable Presentation Contexts" in modality.stdout
    with archive.db.session() as session:
        reasons = [r.reason for r in session.scalars(select(RejectedMessage))]
    assert any("'STRANGER' is not a registered active modality or workstation" in r for r in reasons)
    assert audit_rows(archive, "dicom.find") == []
    # A workstation does not send images.
    stored = subprocess.run(
        [
            dcmtk("storescu"),
            "-v",
            "-aet",
            WORKSTATION_AE,
            "-aec",
            "COVIDET",
            "127.0.0.1",
            str(archive.port),
            str(tmp_path / "doe.dcm"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dcmtk_env(),
        timeout=60,
    )
    assert "Received Store Response (Unknown Status: 0x124)" in stored.stdout, stored.stdout  # not authorised


def test_a_workstation_registered_with_the_cli_may_query(archive: Archive, tmp_path: Path) -> None:
    """`covidet devices add NAME --kind workstation` (the operator's path), then findscu with its AE title."""
    url = archive.db.engine.url.render_as_string(hide_password=False)
    added = subprocess.run(
        [
            sys.executable,
            "-m",
            "covidet.cli",
            "devices",
            "add",
            "viewer-2",
            "--kind",
            "workstation",
            "--ae-title",
            "WS2",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COVIDET_DATABASE_URL": url, "COVIDET_HOME": str(tmp_path / "home")},
        timeout=120,
    )
    assert added.returncode == 0, added.stderr
    done, found = findscu(
        archive,
        tmp_path / "ws2",
        "-S",
        *keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=RG1_STUDY),
        aet="WS2",
    )
    assert done.returncode == 0 and [f.StudyInstanceUID for f in found] == [RG1_STUDY], done.stdout


# ------------------------------------------------------------------------------------------- C-GET


def _held(archive: Archive, study_uid: str) -> dict[str, Dataset]:
    """What covidet holds in the study, as it serves it (Part 10 bytes read back), by SOP Instance UID."""
    with archive.db.session() as session:
        records = aq.instances(session, study_uid=study_uid)
    return {
        r.sop_instance_uid: dcmread(DicomBytesIO(instance_part10(archive.db, archive.store, r)))
        for r in records
    }


def test_getscu_retrieves_the_xray_and_the_ai_sr(archive: Archive, tmp_path: Path) -> None:
    done, received = getscu(
        archive, tmp_path / "got", *keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=RG1_STUDY)
    )
    assert done.returncode == 0, done.stdout
    assert sorted(r.SOPInstanceUID for r in received) == sorted([archive.xray_uid, archive.sr_uid]), (
        done.stdout
    )
    held = _held(archive, RG1_STUDY)
    for theirs in received:  # every element as covidet holds it (the X-ray byte for byte as stored)
        assert theirs == held[theirs.SOPInstanceUID]
    assert {r.Modality for r in received} == {"CR", "SR"}
    rows = audit_rows(archive, "dicom.get")
    assert [(r.object_id, r.details["instances"], r.actor_device_id) for r in rows] == [
        (RG1_STUDY, 2, archive.workstation_id)
    ]

    # The upload, converted to DX on the way out, the same object covidet serves everywhere.
    done, (dx,) = getscu(
        archive, tmp_path / "png", *keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=archive.png_study)
    )
    assert (dx.Modality, dx.PatientID) == ("DX", "P-PNG")
    assert dx == _held(archive, archive.png_study)[dx.SOPInstanceUID]


def test_getscu_of_a_compressed_xray_decompresses_for_a_peer_that_takes_only_uncompressed(
    archive: Archive, tmp_path: Path, rg1_dicom: Path
) -> None:
    """A JPEG Lossless X-ray sent by the modality with storescu; getscu proposes uncompressed syntaxes
    only (its default), so the instance arrives decompressed, same UID, same pixels."""
    jpeg = encode_file(_doe_copy(rg1_dicom, tmp_path / "plain.dcm"), tmp_path / "jpeg.dcm", JPEGLosslessSV1)
    sent = storescu(archive.port, [jpeg], "-xs")
    assert sent.returncode == 0 and "Received Store Response (Success)" in sent.stdout, sent.stdout
    original = dcmread(jpeg)
    done, (received,) = getscu(
        archive,
        tmp_path / "got",
        *keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=original.StudyInstanceUID),
    )
    assert done.returncode == 0, done.stdout
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(received.pixel_array, original.pixel_array)


def test_getscu_reports_failed_sub_operations_with_warning(archive: Archive, tmp_path: Path) -> None:
    with archive.db.session() as session:
        sr = aq.instance_by_uid(session, archive.sr_uid)
    assert sr is not None
    archive.store.path(sr.path).unlink()  # the SR's file is gone: its sub-operation fails
    both_series = f"{RG1_SERIES}\\{sr.series_instance_uid}"
    done, received = getscu(
        archive,
        tmp_path / "got",
        *keys(QueryRetrieveLevel="SERIES", StudyInstanceUID=RG1_STUDY, SeriesInstanceUID=both_series),
    )
    assert [r.SOPInstanceUID for r in received] == [archive.xray_uid], done.stdout
    # 0xB000: sub-operations complete, one or more failures; the failed one is counted.
    assert "Warning: SubOperationsCompleteOneOrMoreFailures" in done.stdout, done.stdout
    assert re.search(r"Completed Suboperations\s*: 1\s.*Failed Suboperations\s*: 1\s", done.stdout, re.S)

    # A retrieve must name its level's unique key: nothing is sent.
    done, received = getscu(archive, tmp_path / "none", *keys(QueryRetrieveLevel="STUDY"), debug=True)
    assert "Error: DataSetDoesNotMatchSOPClass" in done.stdout, done.stdout  # dcmtk's name of 0xA900
    assert "[a retrieve at STUDY level needs StudyInstanceUID" in done.stdout
    assert received == []


# ------------------------------------------------------------------------------------------ C-MOVE


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk's storescp as the C-MOVE destination VIEWER: (port, folder it writes to)."""
    port, folder = free_port(), tmp_path / "viewer"
    folder.mkdir()
    process = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "VIEWER", "-od", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dcmtk_env(),
    )
    try:
        wait_for_port(port, process=process)
        yield port, folder
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_movescu_to_a_registered_destination_and_to_an_unknown_one(
    tmp_path: Path, rg1_dicom: Path, storescp: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, folder = storescp
    # Configured as an operator would: COVIDET_DICOM_MOVE_DESTINATIONS.
    monkeypatch.setenv("COVIDET_DICOM_MOVE_DESTINATIONS", f"VIEWER=127.0.0.1:{port}, PACS=pacs.local:104")
    settings = Settings()
    assert settings.dicom_move_destinations == {"VIEWER": f"127.0.0.1:{port}", "PACS": "pacs.local:104"}
    with _start(tmp_path, f"sqlite:///{tmp_path / 'move.db'}", rg1_dicom, settings=settings) as archive:
        done = run(
            "movescu",
            archive.port,
            "-S",
            "-aem",
            "VIEWER",
            *keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=RG1_STUDY),
        )
        assert done.returncode == 0, done.stdout
        assert sorted(dcmread(f).SOPInstanceUID for f in folder.iterdir()) == sorted(
            [archive.xray_uid, archive.sr_uid]
        )
        unknown = run(
            "movescu",
            archive.port,
            "-S",
            "-aem",
            "NOWHERE",
            *keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=RG1_STUDY),
        )
        assert "Refused: MoveDestinationUnknown" in unknown.stdout, unknown.stdout
        rows = audit_rows(archive, "dicom.move")
        assert [(r.object_id, r.details["destination"]) for r in rows] == [
            (RG1_STUDY, "VIEWER"),
            (None, "NOWHERE"),
        ]
        assert rows[1].details["status"] == "0xA801"
        # A known destination but an identifier without its level's unique key: refused, nothing sent.
        before = sorted(folder.iterdir())
        refused = run(
            "movescu", archive.port, "-S", "-aem", "VIEWER", *keys(QueryRetrieveLevel="SERIES"), debug=True
        )
        assert "DIMSE Status                  : 0xa900" in refused.stdout, refused.stdout
        assert "[a retrieve at SERIES level needs SeriesInstanceUID" in refused.stdout
        assert sorted(folder.iterdir()) == before
        assert audit_rows(archive, "dicom.move")[-1].details["status"] == "0xA900"


@pytest.mark.parametrize(
    "value", ["VIEWER=nohost", "VIEWER=host:0", "=host:104", "VIEWER=host:1,TOOLONGAETITLE123=h:1"]
)
def test_a_bad_move_destination_stops_the_start(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVIDET_DICOM_MOVE_DESTINATIONS", value)
    with pytest.raises(ValidationError, match="move destination"):
        Settings()


def _identifier(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("identifier", "root", "retrieve", "reason"),
    [
        (_identifier(), "study", False, "QueryRetrieveLevel '(none)'"),
        (_identifier(QueryRetrieveLevel="FRAME"), "patient", False, "QueryRetrieveLevel 'FRAME'"),
        (
            _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.*"),
            "study",
            False,
            "UIDs, not wildcards",
        ),
        (_identifier(QueryRetrieveLevel="STUDY", StudyDate="20200230"), "study", False, "is not a date"),
        (
            _identifier(QueryRetrieveLevel="STUDY", StudyDate="20200301-20200101"),
            "study",
            False,
            "ends before",
        ),
        (
            _identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2"),
            "study",
            True,
            "needs SeriesInstanceUID",
        ),
        (_identifier(QueryRetrieveLevel="PATIENT", PatientID="P*"), "patient", True, "without wildcards"),
        (_identifier(QueryRetrieveLevel="STUDY", PatientID=["A", "B"]), "study", False, "one value"),
    ],
)
def test_identifiers_covidet_cannot_answer_are_refused_with_the_reason(
    identifier: Dataset, root: str, retrieve: bool, reason: str
) -> None:
    with pytest.raises(IdentifierError, match=re.escape(reason)) as refused:
        parse_request(identifier, root, retrieve=retrieve)
    assert refused.value.status == 0xA900


def test_date_ranges_and_keys_read_from_an_identifier() -> None:
    assert date_range("20200105") == (date(2020, 1, 5), date(2020, 1, 5))
    assert date_range("-20200105") == (None, date(2020, 1, 5))
    assert date_range("20200105-") == (date(2020, 1, 5), None)
    keys_read = parse_request(
        _identifier(
            QueryRetrieveLevel="series",
            PatientName="DOE*",
            StudyInstanceUID=["1.2.3", "1.2.4"],
            ModalitiesInStudy=["CR", "SR"],
            Modality="sr",
            PatientBirthDate="19800101",
            SeriesDescription="",
        ),
        "study",
    )
    assert (keys_read.level, keys_read.study.patient_name, keys_read.study.study_uids) == (
        "SERIES",
        "DOE*",
        ("1.2.3", "1.2.4"),
    )
    assert (keys_read.modalities_in_study, keys_read.modality, keys_read.unsupported) == (
        ("CR", "SR"),
        "SR",
        ("PatientBirthDate",),
    )


def test_an_over_broad_query_is_refused_from_a_count_without_loading_the_studies(tmp_path: Path) -> None:
    """The bound is checked with one COUNT in the database (benchmarks/dicom_qr_find.py: 16 ms vs 4.9 s
    over 20,000 studies); with a series-level key the studies must be loaded first, then counted."""
    db = Database(f"sqlite:///{tmp_path / 'count.db'}")
    _many_studies(db, 30)
    statements: list[str] = []
    sa_event.listen(db.engine, "before_cursor_execute", lambda _c, _cur, sql, *_: statements.append(sql))
    broad = QueryKeys(level="SERIES", root="study", study=aq.StudyQuery())
    with db.session() as session, pytest.raises(TooManyMatches, match="more than 10 series matches"):
        find_matches(session, broad, limit=10)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1 and "count(" in selects[0].lower(), selects
    statements.clear()
    narrowed = QueryKeys(level="SERIES", root="study", study=aq.StudyQuery(), modality="CR")
    with db.session() as session, pytest.raises(TooManyMatches):
        find_matches(session, narrowed, limit=10)
    assert not any("count(" in s.lower() for s in statements)
    db.dispose()


# -------------------------------------------------------------------------------- a PACS pulling


def test_orthanc_finds_and_moves_a_study_from_covidet(tmp_path: Path, rg1_dicom: Path) -> None:
    """Orthanc (Debian package orthanc) as the PACS of a reading room: covidet is one of its DICOM
    modalities, Orthanc is a workstation and the C-MOVE destination ORTHANC in covidet; Orthanc's REST
    API runs a C-FIND, then a C-MOVE of the answer to itself, and then holds the X-ray and the AI SR."""
    orthanc = start_orthanc()
    try:
        settings = Settings(dicom_move_destinations={"ORTHANC": f"127.0.0.1:{orthanc.port}"})
        with _start(tmp_path, f"sqlite:///{tmp_path / 'pacs.db'}", rg1_dicom, settings=settings) as archive:
            with archive.db.session(write=True) as session:
                queries.create_device(session, "orthanc", "workstation", ae_title="ORTHANC")
            with httpx.Client(base_url=orthanc.url, timeout=120) as http:
                added = http.put(
                    "/modalities/covidet", json={"AET": "COVIDET", "Host": "127.0.0.1", "Port": archive.port}
                )
                assert added.status_code == 200, added.text
                query = http.post(
                    "/modalities/covidet/query",
                    json={
                        "Level": "Study",
                        "Query": {"PatientID": "9RG1", "StudyInstanceUID": "", "ModalitiesInStudy": ""},
                    },
                )
                assert query.status_code == 200, query.text
                path = query.json()["Path"]
                (answer,) = http.get(f"{path}/answers").json()
                content = http.get(f"{path}/answers/{answer}/content?simplify").json()
                assert content["StudyInstanceUID"] == RG1_STUDY and content["ModalitiesInStudy"] == "CR\\SR"
                moved = http.post(
                    f"{path}/answers/{answer}/retrieve", json={"TargetAet": "ORTHANC", "Synchronous": True}
                )
                assert moved.status_code == 200, moved.text
                held = sorted(
                    http.get(f"/instances/{i}/simplified-tags").json()["SOPInstanceUID"]
                    for i in http.get("/instances").json()
                )
            assert held == sorted([archive.xray_uid, archive.sr_uid])
            rows = audit_rows(archive, "dicom.move")
            assert [(r.object_id, r.details["calling_ae"], r.details["destination"]) for r in rows] == [
                (RG1_STUDY, "ORTHANC", "ORTHANC")
            ]
    finally:
        orthanc.stop()

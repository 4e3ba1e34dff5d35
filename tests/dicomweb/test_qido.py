"""QIDO-RS at every level with filters, driven by dicomweb-client against a real uvicorn server; the
archive holds pydicom-data's CR with its AI SR (patient 9RG1, 2004) and a dataset JPEG uploaded for
P-JPEG (served as DX, study dated today)."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import select

from covidet.store.models import AuditEvent
from tests.dicomweb.conftest import Archive, upload_jpeg


def _values(results: list[dict], tag: str) -> list:
    return [item[tag]["Value"][0] for item in results if "Value" in item.get(tag, {})]


def test_study_search_with_matching_keys(archive_db: Archive, data_root: Path) -> None:
    archive = archive_db  # on SQLite and PostgreSQL
    upload_uid = upload_jpeg(archive, data_root)
    client = archive.client()
    every = client.search_for_studies()
    assert sorted(_values(every, "00100020")) == ["9RG1", "P-JPEG"]
    cr = next(s for s in every if s["00100020"]["Value"] == ["9RG1"])
    assert cr["0020000D"]["Value"] == [archive.study_uid]
    assert cr["00080061"]["Value"] == ["CR", "SR"]
    assert (cr["00201206"]["Value"], cr["00201208"]["Value"]) == ([2], [2])
    assert cr["00100010"]["Value"] == [{"Alphabetic": "CompressedSamples^RG1"}]
    assert cr["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{archive.study_uid}")
    assert cr["00080020"]["Value"] == ["20040826"]
    # Keys covidet does not index come from the stored header: referring physician, birth date, sex, ID
    assert cr["00080090"]["Value"] == [{"Alphabetic": "ward"}]
    assert (cr["00100030"]["Value"], cr["00100040"]["Value"], cr["00200010"]["Value"]) == (
        ["19400305"],
        ["F"],
        ["9RG1"],
    )
    upload = next(s for s in every if s["00100020"]["Value"] == ["P-JPEG"])
    assert upload["00100030"] == {"vr": "DA"}  # a required return key without a value

    def ids(**filters: object) -> list[str]:
        return sorted(_values(client.search_for_studies(search_filters=filters), "00100020"))

    assert ids(PatientID="P-JPEG") == ["P-JPEG"]
    assert ids(PatientID="P-*") == ["P-JPEG"]
    assert ids(PatientName="compressedsamples*") == ["9RG1"]
    assert ids(StudyDate="20040101-20041231") == ["9RG1"]
    assert ids(StudyDate="-20031231") == []
    assert ids(ModalitiesInStudy="SR") == ["9RG1"]
    assert ids(ModalitiesInStudy="DX") == ["P-JPEG"]
    assert ids(ModalitiesInStudy="*") == ["9RG1", "P-JPEG"]
    assert ids(AccessionNumber="exam Number") == ["9RG1"]
    assert ids(StudyInstanceUID=f"{archive.study_uid},{upload_uid}") == ["9RG1", "P-JPEG"]
    assert ids(**{"0020000D": upload_uid}) == ["P-JPEG"]  # a key named by its tag
    assert len(client.search_for_studies(limit=1)) == 1
    assert len(client.search_for_studies(limit=1, offset=1)) == 1
    assert client.search_for_studies(offset=2) == []
    fuzzy = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "Compressed*"})
    assert _values(fuzzy, "00100020") == ["9RG1"]


def test_series_and_instance_search(archive: Archive, upload_uid: str) -> None:
    client = archive.client()
    series = client.search_for_series(archive.study_uid)
    assert sorted(_values(series, "00080060")) == ["CR", "SR"]
    cr = next(s for s in series if s["00080060"]["Value"] == ["CR"])
    assert cr["0020000E"]["Value"] == [archive.series_uid]
    assert (cr["00200011"]["Value"], cr["00201209"]["Value"]) == ([1], [1])
    assert "00100020" not in cr  # within a study: no study attributes
    assert _values(client.search_for_series(search_filters={"Modality": "DX"}), "0020000D") == [upload_uid]
    across = client.search_for_series(search_filters={"Modality": "SR"})
    assert _values(across, "0020000E") == [archive.sr_series_uid]
    assert _values(across, "00100020") == ["9RG1"]  # across studies: with the study's attributes

    (xray,) = client.search_for_instances(archive.study_uid, archive.series_uid)
    assert xray["00080018"]["Value"] == [archive.sop_uid]
    assert (xray["00280010"]["Value"], xray["00280011"]["Value"], xray["00280100"]["Value"]) == (
        [1955],
        [1841],
        [16],
    )
    assert xray["00280008"]["Value"] == [1]
    assert xray["00081190"]["Value"][0].endswith(archive.xray_path)
    everything = client.search_for_instances()
    assert sorted(_values(everything, "00080060")) == ["CR", "DX", "SR"]
    (sr,) = client.search_for_instances(search_filters={"SOPInstanceUID": archive.sr_uid})
    assert sr["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.88.34"]
    assert len(client.search_for_instances(archive.study_uid)) == 2
    (full,) = client.search_for_instances(archive.study_uid, archive.series_uid, fields=["all"])
    assert full["00180015"]["Value"] == ["CHEST"] and full["00280004"]["Value"] == ["MONOCHROME1"]
    (some,) = client.search_for_instances(archive.study_uid, archive.series_uid, fields=["BodyPartExamined"])
    assert "00180015" in some and "00280004" not in some
    assert client.search_for_instances(archive.study_uid, "1.2.3") == []


def test_bad_queries_are_400_and_unsupported_keys_are_named(archive: Archive) -> None:
    with httpx.Client(base_url=archive.dicomweb, headers=archive.headers) as http:
        bad_date = http.get("/studies", params={"StudyDate": "2004-08-26"})
        unknown = http.get("/studies", params={"NoSuchAttribute": "x"})
        bad_limit = http.get("/studies", params={"limit": "-1"})
        bad_uid = http.get("/studies", params={"StudyInstanceUID": "abc"})
        ignored = http.get("/studies", params={"PatientSex": "F"})
        html = http.get("/studies", headers={"Accept": "text/html"})
    assert bad_date.status_code == 400 and "YYYYMMDD" in bad_date.json()["detail"]
    assert unknown.status_code == 400 and "NoSuchAttribute" in unknown.json()["detail"]
    assert bad_limit.status_code == 400 and bad_uid.status_code == 400
    assert ignored.status_code == 200 and len(ignored.json()) == 1
    assert "not supported for matching: PatientSex" in ignored.headers["warning"]
    assert html.status_code == 406


def test_search_needs_a_user_and_is_audited(archive: Archive) -> None:
    with httpx.Client(base_url=archive.dicomweb) as http:
        assert http.get("/studies").status_code == 401
        assert http.get("/instances", headers={"X-API-Key": archive.modality_key}).status_code == 401
    archive.client().search_for_series(archive.study_uid)
    with archive.env.db.session() as session:
        (event,) = session.scalars(select(AuditEvent).where(AuditEvent.action == "dicomweb.search")).all()
    assert event.actor_username == "rad" and event.object_id == archive.study_uid
    assert event.details["level"] == "series" and event.details["results"] == 2

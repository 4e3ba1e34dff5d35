"""Orthanc (Debian packages orthanc and orthanc-dicomweb) as a DICOMweb client of covidet: covidet is
one of its ``DicomWeb.Servers``, with a radiologist's bearer token in ``HttpHeaders``; Orthanc searches
covidet (QIDO-RS through its ``/qido`` and ``/get`` proxies), retrieves the study over WADO-RS into its
own storage, and then holds the X-ray and the AI SR byte for byte."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.dicomweb.conftest import Archive
from tests.servers import find_binary, free_port, terminate, wait_for_port

PLUGIN_PATTERNS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
)


@pytest.fixture
def orthanc(archive: Archive) -> Iterator[str]:
    """A private Orthanc with the DICOMweb plugin and covidet as remote server ``covidet``; its URL."""
    binary = find_binary("Orthanc", "orthanc", ("/usr/sbin/Orthanc",))
    plugin = find_binary("libOrthancDicomWeb.so", "orthanc-dicomweb", PLUGIN_PATTERNS)
    directory = Path(tempfile.mkdtemp(prefix="covidet-orthanc-dicomweb-"))
    http_port = free_port()
    config = {
        "Name": "covidet-dicomweb-test",
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "index"),
        "Plugins": [plugin],
        "HttpPort": http_port,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "Servers": {
                "covidet": {
                    "Url": f"{archive.dicomweb}/",
                    "HttpHeaders": {"Authorization": archive.headers["Authorization"]},
                }
            },
        },
    }
    (directory / "orthanc.json").write_text(json.dumps(config))
    with (directory / "orthanc.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, "--verbose", str(directory / "orthanc.json")], stdout=log, stderr=log
        )
        try:
            wait_for_port(http_port, process=process)
            yield f"http://127.0.0.1:{http_port}"
        finally:
            terminate(process, 15)
    shutil.rmtree(directory, ignore_errors=True)


def test_orthanc_queries_and_retrieves_a_study_from_covidet(archive: Archive, orthanc: str) -> None:
    with httpx.Client(base_url=orthanc, timeout=120) as http:
        assert http.get("/dicom-web/servers").json() == ["covidet"]
        found = http.post(
            "/dicom-web/servers/covidet/qido", json={"Uri": "/studies", "Arguments": {"PatientID": "9RG1"}}
        )
        assert found.status_code == 200, found.text
        (study,) = found.json()
        # Orthanc's own shape of the answer: {tag: {"Name", "Value", ...}}
        assert study["0020000D"]["Value"] == archive.study_uid
        assert study["00100020"]["Value"] == "9RG1"
        series = http.post(
            "/dicom-web/servers/covidet/get", json={"Uri": f"/studies/{archive.study_uid}/series"}
        )
        assert series.status_code == 200, series.text
        assert sorted(s["00080060"]["Value"][0] for s in series.json()) == ["CR", "SR"]

        assert http.get("/studies").json() == []
        retrieved = http.post(
            "/dicom-web/servers/covidet/retrieve", json={"Resources": [{"Study": archive.study_uid}]}
        )
        assert retrieved.status_code == 200, retrieved.text
        (orthanc_study,) = http.get("/studies").json()
        tags = http.get(f"/studies/{orthanc_study}").json()["MainDicomTags"]
        assert tags["StudyInstanceUID"] == archive.study_uid
        instances = http.get(f"/studies/{orthanc_study}/instances").json()
        held = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in instances}
        assert set(held) == {archive.sop_uid, archive.sr_uid}
        stored = http.get(f"/instances/{held[archive.sop_uid]}/file").content
    with archive.env.db.session() as session:
        from covidet.store import archive_queries as aq

        record = aq.instance_by_uid(session, archive.sop_uid)
    assert record is not None
    assert stored == archive.env.store.path(record.path).read_bytes()  # byte for byte as covidet keeps it

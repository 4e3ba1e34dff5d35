"""WADO-RS of covidet's archive, driven by dicomweb-client (the DICOMweb client of the Python
ecosystem, on requests) and by plain httpx for the wire details, against a real uvicorn server."""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import urlparse

import highdicom as hd
import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from requests import HTTPError
from sqlalchemy import select

from covidet.archive import archive_review_sr
from covidet.store import review_queries as rq
from covidet.store.models import AuditEvent, Image
from tests.dicomweb.conftest import Archive
from tests.dicomweb.conftest import multipart_parts as _parts


def test_instance_is_retrieved_as_stored(archive: Archive, rg1_dicom: Path) -> None:
    client = archive.client()
    dataset = client.retrieve_instance(archive.study_uid, archive.series_uid, archive.sop_uid)
    assert dataset.SOPInstanceUID == archive.sop_uid
    expected = dcmread(rg1_dicom)
    assert np.array_equal(dataset.pixel_array, expected.pixel_array)

    with httpx.Client(base_url=archive.dicomweb, headers=archive.headers) as http:
        answer = http.get(
            f"/studies/{archive.study_uid}/series/{archive.series_uid}/instances/{archive.sop_uid}"
        )
    assert answer.status_code == 200, answer.text
    assert 'type="application/dicom"' in answer.headers["content-type"]
    assert answer.headers["cache-control"] == "private, no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"
    ((part_type, payload),) = _parts(answer)
    assert part_type.startswith("application/dicom")
    assert payload == rg1_dicom.read_bytes()  # byte for byte as stored


def test_study_and_series_retrieval_hold_the_xray_and_the_ai_sr(archive: Archive) -> None:
    client = archive.client()
    study = client.retrieve_study(archive.study_uid)
    assert sorted(d.Modality for d in study) == ["CR", "SR"]
    (sr,) = client.retrieve_series(archive.study_uid, archive.sr_series_uid)
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    document = hd.sr.srread(DicomBytesIO(buffer.getvalue()))
    assert document.SOPInstanceUID == archive.sr_uid
    evidence = document.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == archive.sop_uid


def test_metadata_is_dicom_json_with_bulk_data_references(archive: Archive) -> None:
    client = archive.client()
    metadata = client.retrieve_instance_metadata(archive.study_uid, archive.series_uid, archive.sop_uid)
    base = f"/dicom-web/studies/{archive.study_uid}/series/{archive.series_uid}/instances/{archive.sop_uid}"
    # An absolute URI built from the request's Host (dicomweb-client sends it without the port).
    assert metadata["7FE00010"]["vr"] == "OW"
    assert urlparse(metadata["7FE00010"]["BulkDataURI"]).path == f"{base}/bulkdata/7FE00010"
    with httpx.Client(base_url=archive.url, headers=archive.headers) as http:
        (exact,) = http.get(f"{base}/metadata").json()
    assert exact["7FE00010"]["BulkDataURI"] == f"{archive.url}{base}/bulkdata/7FE00010"
    dataset = Dataset.from_json(metadata, bulk_data_uri_handler=lambda tag, vr, uri: b"")
    assert (dataset.Rows, dataset.Columns, dataset.BitsAllocated) == (1955, 1841, 16)
    assert dataset.PhotometricInterpretation == "MONOCHROME1"
    study_metadata = client.retrieve_study_metadata(archive.study_uid)
    assert sorted(item["00080060"]["Value"][0] for item in study_metadata) == ["CR", "SR"]
    sr = next(item for item in study_metadata if item["00080060"]["Value"] == ["SR"])
    assert "7FE00010" not in sr and sr["0040A730"]["vr"] == "SQ"  # content sequence, inline


def test_frames_are_the_decoded_pixels(archive: Archive, rg1_dicom: Path) -> None:
    client = archive.client()
    (frame,) = client.retrieve_instance_frames(archive.study_uid, archive.series_uid, archive.sop_uid, [1])
    expected = dcmread(rg1_dicom).pixel_array
    pixels = np.frombuffer(frame, dtype="<u2").reshape(expected.shape)
    assert np.array_equal(pixels, expected)
    base = f"/studies/{archive.study_uid}/series/{archive.series_uid}/instances/{archive.sop_uid}"
    with httpx.Client(base_url=archive.dicomweb, headers=archive.headers) as http:
        as_stored = http.get(
            f"{base}/frames/1",
            headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
        )
        bulk = http.get(f"{base}/bulkdata/7FE00010")
        missing = http.get(f"{base}/frames/2")
        bad = http.get(f"{base}/frames/one")
        refused = http.get(f"{base}/frames/1", headers={"Accept": "text/html"})
    ((part_type, payload),) = _parts(as_stored)
    assert part_type == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert payload == frame
    assert _parts(bulk)[0][1] == frame
    assert missing.status_code == 404 and "1 frame" in missing.json()["detail"]
    assert bad.status_code == 400
    assert refused.status_code == 406 and "application/octet-stream" in refused.json()["detail"]


def test_rendered_png_and_jpeg_with_window_and_viewport(archive: Archive) -> None:
    client = archive.client()
    data = client.retrieve_instance_rendered(
        archive.study_uid,
        archive.series_uid,
        archive.sop_uid,
        media_types=("image/png",),
        params={"viewport": "512,512"},
    )
    picture = PILImage.open(io.BytesIO(data))
    assert picture.format == "PNG" and picture.mode == "L"
    assert max(picture.size) == 512 and picture.size == (482, 512)  # 1841 x 1955, aspect kept
    grey = np.asarray(picture)
    assert grey.min() < 40 and grey.max() > 200  # the instance's own window: a full range picture
    narrow = client.retrieve_instance_rendered(
        archive.study_uid,
        archive.series_uid,
        archive.sop_uid,
        media_types=("image/jpeg",),
        params={"window": "15000,2,linear", "viewport": "128,128"},
    )
    assert PILImage.open(io.BytesIO(narrow)).format == "JPEG"
    base = f"/studies/{archive.study_uid}/series/{archive.series_uid}/instances"
    with httpx.Client(base_url=archive.dicomweb, headers=archive.headers) as http:
        assert http.get(f"{base}/{archive.sop_uid}/rendered", params={"window": "1"}).status_code == 400
        assert http.get(f"{base}/{archive.sop_uid}/rendered", params={"viewport": "0,9"}).status_code == 400
        sr = http.get(
            f"/studies/{archive.study_uid}/series/{archive.sr_series_uid}/instances/{archive.sr_uid}/rendered"
        )
    assert sr.status_code == 406


def test_unknown_uids_are_404_with_a_reason(archive: Archive) -> None:
    with httpx.Client(base_url=archive.dicomweb, headers=archive.headers) as http:
        study = http.get("/studies/1.2.3.4")
        series = http.get(f"/studies/{archive.study_uid}/series/1.2.3/metadata")
        instance = http.get(
            f"/studies/{archive.study_uid}/series/{archive.series_uid}/instances/9.9/frames/1"
        )
    assert study.status_code == 404 and study.json()["detail"] == "no study 1.2.3.4"
    assert series.status_code == 404 and "no series 1.2.3" in series.json()["detail"]
    assert instance.status_code == 404 and "no instance 9.9" in instance.json()["detail"]


def test_reads_need_a_radiologist_or_admin_and_are_audited(archive: Archive) -> None:
    path = f"/studies/{archive.study_uid}/metadata"
    with httpx.Client(base_url=archive.dicomweb) as http:
        assert http.get(path).status_code == 401
        assert http.get(path, headers={"X-API-Key": archive.modality_key}).status_code == 401
        assert http.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert http.get(path, headers=archive.admin_headers).status_code == 200
    with pytest.raises(HTTPError) as refused:
        archive.client(headers={}).retrieve_study(archive.study_uid)
    assert refused.value.response.status_code == 401
    archive.client().retrieve_instance_frames(archive.study_uid, archive.series_uid, archive.sop_uid, [1])
    with archive.env.db.session() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action.like("dicomweb.%"))).all()
    assert [(e.action, e.actor_username, e.object_id) for e in events] == [
        ("dicomweb.metadata", "admin", archive.study_uid),
        ("dicomweb.frames", "rad", archive.study_uid),
    ]
    assert events[1].details["study_uids"] == [archive.study_uid]


def test_signed_review_sr_is_retrieved_beside_the_ai_sr(archive: Archive) -> None:
    with archive.env.db.session(write=True) as session:
        image_id = session.scalar(select(Image.id).where(Image.sop_instance_uid == archive.sop_uid))
        review = rq.create_review(
            session,
            image_id=image_id,
            reviewer_id=archive.env.users["rad"],
            label="covid19",
            comment="Agree.",
            actions=[],
        )
        rq.sign_review(session, review.id, reviewer_id=archive.env.users["rad"])
        review_id = review.id
    kept = archive_review_sr(archive.env.db, archive.env.store, review_id)
    assert kept is not None
    client = archive.client()
    modalities = sorted(s["00080060"]["Value"][0] for s in client.search_for_series(archive.study_uid))
    assert modalities == ["CR", "SR", "SR"]
    (dataset,) = client.retrieve_series(archive.study_uid, kept.series_instance_uid)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    document = hd.sr.srread(DicomBytesIO(buffer.getvalue()))
    assert document.SOPInstanceUID == kept.sop_instance_uid
    assert document.CompletionFlag == "COMPLETE" and document.VerificationFlag == "VERIFIED"

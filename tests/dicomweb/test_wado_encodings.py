"""WADO-RS of instances that are not stored uncompressed: an RLE Lossless copy of the chest X-ray
(frames decoded by default, as stored with ``transfer-syntax=*`` as Cornerstone asks, the file
re-encoded on request) and a JPEG upload served as DX; and the browser's session cookie as the
credential of the viewer."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid
from sqlalchemy import select

from covidet.archive import upload_as_dicom
from covidet.store.models import Image
from tests.api.conftest import PASSWORDS
from tests.dicomweb.conftest import Archive
from tests.dicomweb.conftest import multipart_parts as _parts

#: The Accept of Cornerstone3D's dicom-image-loader (wadors) for frames, unquoted as it sends it.
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
CORNERSTONE_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@pytest.fixture
def rle_path(archive: Archive, rg1_dicom: Path) -> str:
    """An RLE Lossless copy of RG1 (new UIDs) accepted through ingest; its path under the root."""
    dataset = dcmread(rg1_dicom)
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.compress(RLELossless, encoding_plugin="pylibjpeg")
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    archive.env.ingest.accept(buffer.getvalue(), channel="dicom", device_id=None, source="test")
    study, series, sop = dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
    return f"/studies/{study}/series/{series}/instances/{sop}"


def test_compressed_frames_decoded_or_as_stored(archive: Archive, rg1_dicom: Path, rle_path: str) -> None:
    expected = dcmread(rg1_dicom).pixel_array
    with httpx.Client(base_url=archive.dicomweb, headers=archive.headers, timeout=60) as http:
        decoded = http.get(f"{rle_path}/frames/1")
        as_stored = http.get(f"{rle_path}/frames/1", headers={"Accept": CORNERSTONE_ACCEPT})
        as_rle = http.get(
            f"{rle_path}/frames/1", headers={"Accept": 'multipart/related; type="image/dicom-rle"'}
        )
        as_jpeg = http.get(f"{rle_path}/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'})
        rendered = http.get(f"{rle_path}/rendered")
        part10 = http.get(rle_path)
    ((decoded_type, pixels),) = _parts(decoded)
    assert decoded_type == f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
    assert np.array_equal(np.frombuffer(pixels, "<u2").reshape(expected.shape), expected)
    stored = dcmread(io.BytesIO(_parts(part10)[0][1]))
    assert stored.file_meta.TransferSyntaxUID == RLELossless  # retrieved as stored by default
    (rle_frame,) = generate_frames(stored.PixelData, number_of_frames=1)
    ((stored_type, payload),) = _parts(as_stored)
    assert stored_type == f"application/octet-stream; transfer-syntax={RLELossless}"
    assert payload == rle_frame
    assert as_rle.headers["content-type"].startswith('multipart/related; type="image/dicom-rle"')
    assert _parts(as_rle)[0] == (f"image/dicom-rle; transfer-syntax={RLELossless}", rle_frame)
    assert as_jpeg.status_code == 406 and "not as image/jpeg" in as_jpeg.json()["detail"]
    assert rendered.status_code == 200 and rendered.headers["content-type"] == "image/png"


def test_compressed_instance_re_encoded_on_request(archive: Archive, rg1_dicom: Path, rle_path: str) -> None:
    _, _, study, _, series, _, sop = rle_path.split("/")
    client = archive.client()
    dataset = client.retrieve_instance(
        study, series, sop, media_types=(("application/dicom", ExplicitVRLittleEndian),)
    )
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(dataset.pixel_array, dcmread(rg1_dicom).pixel_array)
    with httpx.Client(base_url=archive.dicomweb, headers=archive.headers, timeout=60) as http:
        jpeg = http.get(
            rle_path,
            headers={
                "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=' + JPEG_BASELINE
            },
        )
    assert jpeg.status_code == 406 and "stored as 1.2.840.10008.1.2.5" in jpeg.json()["detail"]


def test_jpeg_upload_is_served_as_dx(archive: Archive, upload_uid: str) -> None:
    client = archive.client()
    (series,) = client.search_for_series(upload_uid)
    assert series["00080060"]["Value"] == ["DX"]
    series_uid = series["0020000E"]["Value"][0]
    (instance,) = client.search_for_instances(upload_uid, series_uid)
    sop_uid = instance["00080018"]["Value"][0]
    metadata = client.retrieve_instance_metadata(upload_uid, series_uid, sop_uid)
    assert metadata["7FE00010"]["vr"] == "OB" and metadata["00100020"]["Value"] == ["P-JPEG"]
    (frame,) = client.retrieve_instance_frames(upload_uid, series_uid, sop_uid, [1])
    with archive.env.db.session() as session:
        image_id = session.scalar(select(Image.id).where(Image.sop_instance_uid == sop_uid))
    served = upload_as_dicom(archive.env.db, archive.env.store, image_id)
    assert frame == served.pixel_array.tobytes()
    retrieved = client.retrieve_instance(upload_uid, series_uid, sop_uid)
    assert retrieved.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1" and retrieved.Modality == "DX"


def test_the_browser_session_reads_like_a_token(archive: Archive) -> None:
    with httpx.Client(base_url=archive.url, timeout=60) as browser:
        signed_in = browser.post("/api/v1/auth/login", data={"username": "rad", "password": PASSWORDS["rad"]})
        assert signed_in.status_code == 200, signed_in.text
        metadata = browser.get(f"/dicom-web{archive.xray_path}/metadata")
        frames = browser.get(
            f"/dicom-web{archive.xray_path}/frames/1", headers={"Accept": CORNERSTONE_ACCEPT}
        )
        assert browser.post(
            "/api/v1/auth/logout", headers={"X-CSRF-Token": signed_in.json()["csrf_token"]}
        ).status_code in (200, 204)
        after = browser.get(f"/dicom-web{archive.xray_path}/metadata")
    assert metadata.status_code == 200 and frames.status_code == 200
    assert after.status_code == 401

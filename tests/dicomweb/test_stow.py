"""STOW-RS into covidet, driven by dicomweb-client (chunked multipart/related, as it sends large
studies) and by httpx for the refusals, against a real uvicorn server; what was stored is then read
back through QIDO-RS and WADO-RS, and the refusals are checked in rejected_messages."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from requests import HTTPError
from sqlalchemy import select

from covidet.store import queries
from covidet.store.models import AuditEvent, RejectedMessage
from tests.api.conftest import PASSWORDS, ApiEnv, make_env, serve

BOUNDARY = "covidet-test-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
MAX_IMAGE_BYTES = 8 * 1024 * 1024  # RG1 is 7.2 MB


class Served:
    def __init__(
        self, env: ApiEnv, url: str, keys: dict[str, str], tokens: dict[str, dict[str, str]]
    ) -> None:
        self.env, self.url, self.keys, self.tokens = env, url, keys, tokens

    def client(self, headers: dict[str, str]):  # type: ignore[no-untyped-def]
        from dicomweb_client import DICOMwebClient

        return DICOMwebClient(url=f"{self.url}/dicom-web", headers=headers)

    def device(self, kind: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[kind]}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """An empty covidet (images up to 8 MiB) with a modality, an uploader and a sensor device."""
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'covidet.db'}", max_image_bytes=MAX_IMAGE_BYTES)
    with env.db.session(write=True) as session:
        keys = {
            kind: queries.create_device(session, f"{kind}-1", kind).api_key
            for kind in ("modality", "uploader", "sensor")
        }
    with serve(env.app) as url, httpx.Client(base_url=url, timeout=60) as http:
        tokens = {name: env.token(http, name) for name in ("admin", "rad")}
        yield Served(env, url, keys, tokens)  # type: ignore[arg-type]
    env.ingest.queue.close()  # type: ignore[attr-defined]
    env.db.dispose()


def _body(*parts: bytes, part_type: str = "application/dicom", close: bool = True) -> bytes:
    chunks = [
        f"--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n" for part in parts
    ]
    return b"".join(chunks) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def _copy(path: Path, *, pixels: bool = True, **changes: str) -> bytes:
    """RG1 with new UIDs (a new study, series and instance) and ``changes``, as Part 10 bytes."""
    dataset = dcmread(path)
    if not pixels:
        del dataset.PixelData
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_stow_of_the_chest_xray_then_qido_and_wado_find_it(served: Served, rg1_dicom: Path) -> None:
    client = served.client(served.device("modality"))
    dataset = dcmread(rg1_dicom)
    answer = client.store_instances([dataset])  # 7 MB: sent chunked by dicomweb-client
    (item,) = answer.ReferencedSOPSequence
    assert item.ReferencedSOPInstanceUID == dataset.SOPInstanceUID
    assert item.RetrieveURL.endswith(
        f"/dicom-web/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
        f"/instances/{dataset.SOPInstanceUID}"
    )
    assert answer.RetrieveURL.endswith(f"/studies/{dataset.StudyInstanceUID}")
    assert "FailedSOPSequence" not in answer
    again = client.store_instances([dataset], study_instance_uid=dataset.StudyInstanceUID)  # idempotent
    assert again.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == dataset.SOPInstanceUID

    reader = served.client(served.tokens["rad"])
    (study,) = reader.search_for_studies(search_filters={"PatientID": "9RG1"})
    assert study["0020000D"]["Value"] == [dataset.StudyInstanceUID]
    back = reader.retrieve_instance(
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
    )
    assert np.array_equal(back.pixel_array, dataset.pixel_array)
    with served.env.db.session() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "dicomweb.store")).all()
    assert [(e.actor_username, e.object_id, e.details["stored"]) for e in events] == [
        ("modality-1", dataset.StudyInstanceUID, 1),
        ("modality-1", dataset.StudyInstanceUID, 1),
    ]


def test_bad_instances_are_listed_with_failure_reasons(served: Served, rg1_dicom: Path) -> None:
    good = _copy(rg1_dicom)
    truncated = _copy(rg1_dicom)[:5000]
    ct = _copy(rg1_dicom, pixels=False, SOPClassUID="1.2.840.10008.5.1.4.1.1.2")  # refused by its class
    with httpx.Client(
        base_url=f"{served.url}/dicom-web", headers=served.device("uploader"), timeout=60
    ) as http:
        mixed = http.post("/studies", content=_body(good, truncated, ct), headers={"Content-Type": STOW_TYPE})
        only_bad = http.post(
            "/studies", content=_body(b"not DICOM at all"), headers={"Content-Type": STOW_TYPE}
        )
        elsewhere = http.post(
            "/studies/1.2.3", content=_body(_copy(rg1_dicom)), headers={"Content-Type": STOW_TYPE}
        )
    assert mixed.status_code == 202, mixed.text
    assert mixed.headers["content-type"] == "application/dicom+json"
    answer = Dataset.from_json(mixed.json())
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [
        dcmread(io.BytesIO(good)).SOPInstanceUID
    ]
    reasons = {i.ReferencedSOPInstanceUID: i.FailureReason for i in answer.FailedSOPSequence}
    assert reasons == {
        dcmread(io.BytesIO(truncated), stop_before_pixels=True).SOPInstanceUID: 0xC000,
        dcmread(io.BytesIO(ct), stop_before_pixels=True).SOPInstanceUID: 0x0122,
    }
    assert only_bad.status_code == 409
    (failed,) = Dataset.from_json(only_bad.json()).FailedSOPSequence
    assert failed.FailureReason == 0xC000
    assert elsewhere.status_code == 409
    assert Dataset.from_json(elsewhere.json()).FailedSOPSequence[0].FailureReason == 0x0110
    with served.env.db.session() as session:
        rejected = session.scalars(select(RejectedMessage).where(RejectedMessage.channel == "dicomweb")).all()
    assert len(rejected) == 4 and all(r.source == "uploader-1" for r in rejected)
    assert any("not 1.2.3" in r.reason for r in rejected)


def test_dicomweb_client_sees_a_refused_instance(served: Served, rg1_dicom: Path) -> None:
    client = served.client(served.device("modality"))
    ct = dcmread(io.BytesIO(_copy(rg1_dicom, SOPClassUID="1.2.840.10008.5.1.4.1.1.2")))
    with pytest.raises(HTTPError) as refused:
        client.store_instances([ct])
    assert refused.value.response.status_code == 409


def test_who_may_store(served: Served, rg1_dicom: Path) -> None:
    body = _body(_copy(rg1_dicom))
    with httpx.Client(base_url=f"{served.url}/dicom-web", timeout=60) as http:

        def post(headers: dict[str, str]) -> httpx.Response:
            return http.post("/studies", content=body, headers={"Content-Type": STOW_TYPE, **headers})

        assert post({}).status_code == 401
        with served.env.db.session() as session:
            (refused,) = session.scalars(select(RejectedMessage)).all()
        assert refused.channel == "dicomweb" and refused.source == "client 127.0.0.1"
        assert post({"X-API-Key": "cvd_wrong"}).status_code == 401
        assert post({"Authorization": "Bearer wrong"}).status_code == 401
        assert post(served.tokens["rad"]).status_code == 403
        sensor = post(served.device("sensor"))
        assert sensor.status_code == 403 and "sensor" in sensor.json()["detail"]
        assert post(served.tokens["admin"]).status_code == 200
        # A browser session (even an admin's) is no STOW credential: no cookie-borne store, no CSRF.
        signed_in = http.post(
            f"{served.url}/api/v1/auth/login", data={"username": "admin", "password": PASSWORDS["admin"]}
        )
        assert signed_in.status_code == 200
        csrf = {"X-CSRF-Token": signed_in.json()["csrf_token"]}
        assert post(csrf).status_code == 401 and "covidet_session" in http.cookies


def test_refused_bodies(served: Served, rg1_dicom: Path) -> None:
    good = _copy(rg1_dicom)
    limit = MAX_IMAGE_BYTES + 64 * 1024
    with httpx.Client(
        base_url=f"{served.url}/dicom-web", headers=served.device("modality"), timeout=60
    ) as http:
        form = http.post("/studies", files={"file": ("x.dcm", good)})
        json_stow = http.post(
            "/studies",
            content=b"[]",
            headers={"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=x'},
        )
        no_boundary = http.post(
            "/studies",
            content=_body(good),
            headers={"Content-Type": 'multipart/related; type="application/dicom"'},
        )
        unclosed = http.post(
            "/studies", content=_body(good, close=False), headers={"Content-Type": STOW_TYPE}
        )
        declared = http.post("/studies", content=b"x" * (limit + 1), headers={"Content-Type": STOW_TYPE})

        def stream() -> Iterator[bytes]:  # chunked: no Content-Length to refuse early
            yield _body(good)[:-10]
            for _ in range(2):
                yield b"\0" * (1024 * 1024)

        chunked = http.post("/studies", content=stream(), headers={"Content-Type": STOW_TYPE})
    assert form.status_code == 415 and "multipart/related" in form.json()["detail"]
    assert json_stow.status_code == 415
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["detail"]
    assert unclosed.status_code == 400 and "closing boundary" in unclosed.json()["detail"]
    assert declared.status_code == 413 and "COVIDET_MAX_IMAGE_BYTES" in declared.json()["detail"]
    assert chunked.status_code == 413
    with served.env.db.session() as session:
        assert session.query(RejectedMessage).filter_by(channel="dicomweb").count() == 6
        assert (
            session.execute(select(AuditEvent).where(AuditEvent.action == "dicomweb.store")).first() is None
        )


def test_oversized_and_foreign_parts_fail_one_by_one(served: Served, rg1_dicom: Path) -> None:
    plain = _copy(rg1_dicom)
    padding = MAX_IMAGE_BYTES + 1000 - len(plain)  # past the limit of one instance, not of the body
    oversized = plain + b"\0" * padding
    headers = {"Content-Type": STOW_TYPE, **served.device("uploader")}
    with httpx.Client(base_url=f"{served.url}/dicom-web", headers=headers, timeout=60) as http:
        big = http.post("/studies", content=_body(oversized))
        text = http.post("/studies", content=_body(b"hello", part_type="text/plain"))
    assert big.status_code == 409, big.text
    assert Dataset.from_json(big.json()).FailedSOPSequence[0].FailureReason == 0xA700
    assert text.status_code == 409
    (failed,) = Dataset.from_json(text.json()).FailedSOPSequence
    assert failed.FailureReason == 0xC000 and failed.ReferencedSOPInstanceUID == ""

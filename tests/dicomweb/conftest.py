"""Fixtures of the DICOMweb tests: covidet's app served by a real uvicorn on a loopback port, holding
pydicom-data's chest radiograph (accepted through the real ingest, with an AI result written as the
worker writes it and its AI SR kept as the analysis keeps it) and credentials of each kind."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from dicomweb_client import DICOMwebClient

from covidet.archive import archive_ai_sr
from covidet.store import archive_queries as aq
from covidet.store import queries
from covidet.store.models import Study
from tests.api.conftest import ApiEnv, dataset_jpegs, make_env, seed_image, serve

FINDINGS = (("covid19", 0.91, (300.0, 400.0, 900.0, 1200.5)),)


@dataclass
class Archive:
    """A served covidet: ``url`` is the server root, ``dicomweb`` the DICOMweb service root."""

    env: ApiEnv
    url: str
    headers: dict[str, str]  # a radiologist's bearer token
    admin_headers: dict[str, str]
    modality_key: str
    sensor_key: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sr_uid: str
    sr_series_uid: str

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def xray_path(self) -> str:
        """The X-ray's path under the service root."""
        return f"/studies/{self.study_uid}/series/{self.series_uid}/instances/{self.sop_uid}"

    @property
    def sr_path(self) -> str:
        return f"/studies/{self.study_uid}/series/{self.sr_series_uid}/instances/{self.sr_uid}"

    def client(self, headers: dict[str, str] | None = None) -> DICOMwebClient:
        return DICOMwebClient(url=self.dicomweb, headers=headers if headers is not None else self.headers)


@pytest.fixture
def archive(tmp_path: Path, rg1_dicom: Path) -> Iterator[Archive]:
    """The served archive over SQLite (tests of the HTTP layer, where the backend does not matter)."""
    yield from _archive(tmp_path, rg1_dicom, f"sqlite:///{tmp_path / 'covidet.db'}")


@pytest.fixture
def archive_db(tmp_path: Path, rg1_dicom: Path, database_url: str) -> Iterator[Archive]:
    """The same over each backend: SQLite and a private PostgreSQL (the queries' matching)."""
    yield from _archive(tmp_path, rg1_dicom, database_url)


def _archive(tmp_path: Path, rg1_dicom: Path, database_url: str) -> Iterator[Archive]:
    env = make_env(tmp_path, database_url)
    # Accepted through the real ingest with an AI result written as the worker writes it, then its
    # SR kept as the analysis keeps it.
    accepted = seed_image(env, rg1_dicom.read_bytes(), patient_key="9RG1", findings=FINDINGS)
    assert archive_ai_sr(env.db, env.store, accepted.image_id) is not None
    with env.db.session(write=True) as session:
        modality = queries.create_device(session, "xr-room-1", "modality").api_key
        sensor = queries.create_device(session, "bed-7-spo2", "sensor").api_key
    with env.db.session() as session:
        xray, sr = aq.instances(session, study_ids=[accepted.study_id])
    assert modality is not None and sensor is not None
    with serve(env.app) as url, httpx.Client(base_url=url, timeout=60) as http:
        headers = env.token(http, "rad")
        admin = env.token(http, "admin")
        yield Archive(
            env,
            url,
            headers,
            admin,
            modality,
            sensor,
            xray.study_instance_uid,
            xray.series_instance_uid,
            xray.sop_instance_uid,
            sr.sop_instance_uid,
            sr.series_instance_uid,
        )
    env.ingest.queue.close()  # type: ignore[attr-defined]
    env.db.dispose()


@pytest.fixture
def upload_uid(archive: Archive, data_root: Path) -> str:
    """A JPEG X-ray of the dataset uploaded for patient P-JPEG (served as a DX object); its study UID."""
    return upload_jpeg(archive, data_root)


def upload_jpeg(archive: Archive, data_root: Path) -> str:
    """Upload the first val JPEG of the dataset for patient P-JPEG through ingest; its study UID."""
    (jpeg,) = dataset_jpegs(data_root, 1)
    accepted = archive.env.ingest.accept(
        jpeg.read_bytes(), channel="upload", device_id=None, source="test", patient_key="P-JPEG"
    )
    with archive.env.db.session() as session:
        return session.get(Study, accepted.study_id).study_instance_uid


def multipart_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, payload) of each part of a multipart/related answer, parsed strictly here."""
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related")
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    body = response.content
    assert body.endswith(b"--" + boundary + b"--\r\n")
    found = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, payload = chunk[2:].partition(b"\r\n\r\n")
        assert payload.endswith(b"\r\n")
        found.append((head.decode().split(":", 1)[1].strip(), payload[:-2]))
    return found

"""HTTPS upload (``POST /api/v1/images``) against a real uvicorn server, on SQLite and PostgreSQL.

The main test walks one server through every promised answer (201, 200 duplicate, 401, 403, 413,
415, 422) and then checks that a good upload still works and that the database rows and stored
files of everything accepted before are intact. The size cap is also checked at the ASGI level,
where the bytes the app pulls from the body can be counted exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import resource
import ssl
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pydicom
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image as PILImage
from sqlalchemy import select

from covidet import DISCLAIMER
from covidet.api import create_app
from covidet.api.routes.images import FORM_OVERHEAD_BYTES
from covidet.config import Settings
from covidet.imaging.dicom_writer import dicom_bytes
from covidet.ingest.storage import ImageStore
from covidet.store import queries
from covidet.store.db import Database
from covidet.store.models import Device, Image, Patient, RejectedMessage
from tests.servers import free_port

MAX_IMAGE_BYTES = 8 * 1024 * 1024  # RG1_UNCR.dcm (7.2 MB) fits; the oversize payloads do not
UPLOAD = "/api/v1/images"


# ------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def serve_in_thread(
    app: FastAPI, *, ssl_certfile: Path | None = None, ssl_keyfile: Path | None = None
) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"{'https' if ssl_certfile else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def bomb_png(side: int = 30_000) -> bytes:
    """A valid side x side 1-bit PNG of zeros: ~110 KB on the wire, 900 Mpixel once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    rows = b"\0" * (1 + (side + 7) // 8) * 1000  # filter byte + packed pixels, 1000 rows at a time
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(rows) for _ in range(side // 1000)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def dataset_images(data_root: Path, count: int) -> list[Path]:
    """The first ``count`` validation X-rays of the real dataset (JPEG files)."""
    with (data_root / "manifest.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "val"]
    return [data_root / row["image"] for row in rows[:count]]


def as_png(path: Path) -> bytes:
    buffer = io.BytesIO()
    PILImage.open(path).convert("L").save(buffer, format="PNG")
    return buffer.getvalue()


def make_app(tmp_path: Path, database_url: str) -> tuple[FastAPI, SimpleNamespace]:
    settings = Settings(home=tmp_path / "home", database_url=database_url, max_image_bytes=MAX_IMAGE_BYTES)
    app = create_app(settings)
    db: Database = app.state.db
    with db.session(write=True) as session:
        keys = SimpleNamespace(
            uploader=queries.create_device(session, "ward-phone", "uploader"),
            modality=queries.create_device(session, "xray-room-1", "modality"),
            sensor=queries.create_device(session, "bed-7", "sensor"),
        )
    return app, keys


def post(
    client: httpx.Client, key: str | None, content: bytes, name: str = "x", **data: str
) -> httpx.Response:
    headers = {"X-API-Key": key} if key is not None else {}
    return client.post(UPLOAD, headers=headers, files={"file": (name, content)}, data=data)


# -------------------------------------------------------------------------------------------- tests


def test_upload_every_answer_then_still_serving(
    database_url: str, tmp_path: Path, data_root: Path, rg1_dicom: Path
) -> None:
    app, keys = make_app(tmp_path, database_url)
    db: Database = app.state.db
    store = ImageStore(app.state.settings.image_store_dir)
    xrays = dataset_images(data_root, 3)
    png = as_png(xrays[0])
    jpeg = xrays[1].read_bytes()
    rg1 = rg1_dicom.read_bytes()
    rg1_ds = pydicom.dcmread(rg1_dicom)
    no_pixels = pydicom.dcmread(rg1_dicom)
    del no_pixels.PixelData
    accepted: dict[int, bytes] = {}

    with serve_in_thread(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        health = client.get("/api/v1/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok" and health.json()["database"] == "ok"

        # PNG with a patient id: 201, then the same bytes again: 200, same image.
        first = post(client, keys.uploader.api_key, png, "chest.png", patient_id="P-001")
        assert first.status_code == 201, first.text
        body = first.json()
        assert body["duplicate"] is False and body["status"] == "queued"
        assert body["media_type"] == "image/png" and body["patient_key"] == "P-001"
        assert body["disclaimer"] == DISCLAIMER
        assert set(body) >= {"image_id", "study_id", "patient_id", "sop_instance_uid"}
        accepted[body["image_id"]] = png
        again = post(client, keys.uploader.api_key, png, "other-name.png", patient_id="P-001")
        assert again.status_code == 200, again.text
        assert again.json() | {"duplicate": False} == body and again.json()["duplicate"] is True

        # DICOM from a modality: its own PatientID and SOP Instance UID; patient_id ignored.
        dicom = post(client, keys.modality.api_key, rg1, "rg1.dcm", patient_id="ignored")
        assert dicom.status_code == 201, dicom.text
        assert dicom.json()["sop_instance_uid"] == rg1_ds.SOPInstanceUID
        assert dicom.json()["patient_key"] == rg1_ds.PatientID
        assert dicom.json()["media_type"] == "application/dicom"
        accepted[dicom.json()["image_id"]] = rg1

        # A real JPEG of the dataset, detected from content although its name says .bin.
        jpg = post(client, keys.uploader.api_key, jpeg, "upload.bin", patient_id="P-002")
        assert jpg.status_code == 201, jpg.text
        assert jpg.json()["media_type"] == "image/jpeg"
        accepted[jpg.json()["image_id"]] = jpeg

        # Authentication and authorisation.
        for key in (None, "cvd_not-a-real-key"):
            refused = post(client, key, png)
            assert refused.status_code == 401
            assert "API key" in refused.json()["detail"]
            assert "X-API-Key" in refused.headers["www-authenticate"]
        sensor = post(client, keys.sensor.api_key, png)
        assert sensor.status_code == 403 and "sensor" in sensor.json()["detail"]

        # Too large: pixels (decompression bomb, refused from its header, never decoded) ...
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        bomb = post(client, keys.uploader.api_key, bomb_png(), "bomb.png")
        assert bomb.status_code == 413 and "too large" in bomb.json()["detail"]
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 300 * 1024  # KiB
        # ... bytes, declared by Content-Length (refused before reading) ...
        big = b"\0" * (MAX_IMAGE_BYTES + FORM_OVERHEAD_BYTES)
        declared = post(client, keys.uploader.api_key, big, "big.dcm")
        assert declared.status_code == 413 and "limit" in declared.json()["detail"]
        # ... a file a little over the limit inside a body under the form limit ...
        over = post(client, keys.uploader.api_key, b"\0" * (MAX_IMAGE_BYTES + 1), "over.dcm")
        assert over.status_code == 413 and "limit" in over.json()["detail"]

        # ... and bytes streamed without Content-Length (chunked): cut off at the limit.
        def chunked_body() -> Iterator[bytes]:
            yield b'--BOUNDARY\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
            for _ in range((MAX_IMAGE_BYTES + FORM_OVERHEAD_BYTES) // 65536 + 2):
                yield b"\0" * 65536
            yield b"\r\n--BOUNDARY--\r\n"

        streamed = client.post(
            UPLOAD,
            content=chunked_body(),
            headers={
                "X-API-Key": keys.uploader.api_key,
                "Content-Type": "multipart/form-data; boundary=BOUNDARY",
            },
        )
        assert streamed.status_code == 413 and "limit" in streamed.json()["detail"]

        # Not an image, truncated DICOM, DICOM without pixel data, bad form.
        text = post(client, keys.uploader.api_key, b"patient notes, not an image\n" * 10, "notes.txt")
        assert text.status_code == 415 and "not a DICOM file" in text.json()["detail"]
        truncated = post(client, keys.modality.api_key, rg1[: len(rg1) // 2], "cut.dcm")
        assert truncated.status_code == 422 and "truncated" in truncated.json()["detail"]
        pixelless = post(client, keys.modality.api_key, dicom_bytes(no_pixels), "empty.dcm")
        assert pixelless.status_code == 422 and "no pixel data" in pixelless.json()["detail"]
        empty = post(client, keys.uploader.api_key, b"", "empty.png")
        assert empty.status_code == 422 and "empty" in empty.json()["detail"]
        long_id = post(client, keys.uploader.api_key, png, "x.png", patient_id="P" * 65)
        assert long_id.status_code == 422 and "patient_id" in long_id.json()["detail"]
        no_file = client.post(UPLOAD, headers={"X-API-Key": keys.uploader.api_key}, data={"a": "b"})
        assert no_file.status_code == 415  # urlencoded, not multipart
        json_body = client.post(UPLOAD, headers={"X-API-Key": keys.uploader.api_key}, json={"file": "x"})
        assert json_body.status_code == 415

        # The server kept serving: a new image is accepted, health is fine.
        late = post(client, keys.uploader.api_key, xrays[2].read_bytes(), "late.jpg", patient_id="P-003")
        assert late.status_code == 201, late.text
        accepted[late.json()["image_id"]] = xrays[2].read_bytes()
        assert client.get("/api/v1/health").json()["status"] == "ok"

        spec = client.get("/openapi.json").json()
        operation = spec["paths"][UPLOAD]["post"]
        assert "multipart/form-data" in operation["requestBody"]["content"]
        assert {"201", "200", "401", "403", "413", "415", "422"} <= set(operation["responses"])
        assert spec["components"]["securitySchemes"]["DeviceApiKey"]["name"] == "X-API-Key"

    # Everything accepted is in the database and on disk, byte for byte; nothing refused is.
    with db.session() as session:
        images = {image.id: image for image in session.scalars(select(Image))}
        assert set(images) == set(accepted)
        uploader = session.scalar(select(Device).where(Device.name == "ward-phone"))
        for image_id, data in accepted.items():
            image = images[image_id]
            assert image.content_sha256 == hashlib.sha256(data).hexdigest()
            assert store.read(image.path) == data
            assert image.status == "queued"
        assert images[first.json()["image_id"]].source_device_id == uploader.id
        assert images[first.json()["image_id"]].original_filename == "chest.png"
        patients = set(session.scalars(select(Patient.patient_key)))
        assert patients == {"P-001", "P-002", "P-003", rg1_ds.PatientID}
        rejected = list(session.scalars(select(RejectedMessage).order_by(RejectedMessage.id)))
        assert all(row.channel == "upload" for row in rejected)
        reasons = [row.reason for row in rejected]
        assert sum("API key" in reason for reason in reasons) == 2
        assert any("sensor" in reason for reason in reasons)
        assert sum("limit" in reason or "too large" in reason for reason in reasons) == 4
        assert any("no pixel data" in reason for reason in reasons)
        assert len(rejected) == 14
    stored_files = [p for p in store.root.rglob("*") if p.is_file()]
    assert len(stored_files) == len(accepted)  # no partial or temporary files left behind
    assert app.state.ingest.queue.enqueued == len(accepted)


def test_https_upload_with_self_signed_certificate(tmp_path: Path, data_root: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    app, keys = make_app(tmp_path, f"sqlite:///{tmp_path / 'covidet.db'}")
    jpeg = dataset_images(data_root, 1)[0].read_bytes()
    trust = ssl.create_default_context(cafile=str(cert))
    with serve_in_thread(app, ssl_certfile=cert, ssl_keyfile=key) as base_url:
        assert base_url.startswith("https://")
        with httpx.Client(base_url=base_url, verify=trust, timeout=60) as client:
            response = post(client, keys.uploader.api_key, jpeg, "chest.jpg", patient_id="TLS-1")
            assert response.status_code == 201, response.text
            assert response.json()["patient_key"] == "TLS-1"
        # A client that does not trust the certificate cannot talk to it.
        with pytest.raises(httpx.ConnectError), httpx.Client(base_url=base_url, timeout=10) as untrusting:
            untrusting.get("/api/v1/health")
    with app.state.db.session() as session:
        assert queries.counts(session)["images"] == 1


async def _drive_asgi(app: FastAPI, headers: dict[str, str], chunks: Iterator[bytes]) -> tuple[int, int]:
    """Send one POST to ``app`` over raw ASGI; returns (status, body bytes the app pulled)."""
    pulled = 0
    status = 0
    pending = list(chunks)

    async def receive() -> dict[str, object]:
        nonlocal pulled
        if not pending:
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, object]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])  # type: ignore[arg-type]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": UPLOAD,
        "raw_path": UPLOAD.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return status, pulled


def test_size_cap_bounds_what_is_read(tmp_path: Path) -> None:
    app, keys = make_app(tmp_path, f"sqlite:///{tmp_path / 'covidet.db'}")
    limit = MAX_IMAGE_BYTES + FORM_OVERHEAD_BYTES
    chunk = 256 * 1024
    head = b'--B\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
    chunks = [head] + [b"\0" * chunk] * (3 * limit // chunk) + [b"\r\n--B--\r\n"]
    headers = {"x-api-key": keys.uploader.api_key, "content-type": "multipart/form-data; boundary=B"}

    # Without Content-Length: the app stops pulling one chunk after the limit.
    status, pulled = asyncio.run(_drive_asgi(app, headers, iter(chunks)))
    assert status == 413
    assert limit < pulled <= limit + chunk
    # With a Content-Length over the limit: refused before one byte of the body is pulled.
    total = sum(len(c) for c in chunks)
    status, pulled = asyncio.run(_drive_asgi(app, headers | {"content-length": str(total)}, iter(chunks)))
    assert status == 413 and pulled == 0
    # Without a valid key: 401 before one byte is pulled.
    status, pulled = asyncio.run(_drive_asgi(app, headers | {"x-api-key": "wrong"}, iter(chunks)))
    assert status == 401 and pulled == 0


def test_health_reports_an_unreachable_database(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    unreachable = Database(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none", migrate=False)
    app = create_app(settings, db=unreachable)

    async def get_health() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://covidet") as client:
            return await client.get("/api/v1/health")

    response = asyncio.run(get_health())
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"


def test_api_does_not_import_torch() -> None:
    code = "import sys, covidet.api; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

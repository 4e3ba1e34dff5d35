"""Load-test finding 4 (docs/load.md): SIGTERM did not stop a loaded ``covidet serve`` in two minutes.

A real ``covidet serve`` process (DICOM receiver, MQTT subscriber, web app and API; analysis jobs go to
a private Redis, so no detector loads here) under load from real clients at the moment of SIGTERM:
``storescu`` sending X-rays in one association, ``mosquitto_pub`` publishing readings, and ``curl``
uploading an X-ray at 1 KB/s, as a phone on a bad network does (a request that alone would hold the
old server's stop for minutes). With ``COVIDET_SHUTDOWN_GRACE_SECONDS=5`` the process exits with
status 0 instead of waiting for that client, and nothing acknowledged is lost: every image storescu
saw acknowledged is in the database, still ``queued``; every reading the broker took is stored, the
rest by the next subscriber of covidet's session.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy import func, select

from covidet.imaging.dicom_writer import dicom_bytes, xray_to_dicom
from covidet.ingest.mqtt import VitalsSubscriber
from covidet.store import Database, VitalSignRecord, queries
from covidet.store.models import Image
from tests.ingest.conftest import dcmtk, dcmtk_env, manifest_rows
from tests.ingest.test_load_defects_retriage import publish_lines
from tests.ingest.test_mqtt import INGEST_PASSWORD, INGEST_USER, NOW, reading, wait_until, write_broker_files
from tests.servers import free_port, start_mosquitto, start_redis, wait_for_port

GRACE_SECONDS = 5
READINGS = 300


def count(db: Database, model: type) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_sigterm_stops_a_loaded_server_within_the_grace_and_loses_nothing(
    tmp_path: Path, data_root: Path
) -> None:
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'covidet.db'}"
    db = Database(url)
    with db.session(write=True) as session:
        queries.create_device(session, "xray-room-1", "modality", ae_title="LOADSCU")
        sensor = queries.create_device(session, "bed-1", "sensor")
        phone = queries.create_device(session, "ward-phone", "uploader")
    rows = manifest_rows(data_root, 8)
    files = []
    for index, row in enumerate(rows):
        ds = xray_to_dicom(data_root / row["image"], patient_id=f"shut-{row['patient_id']}")
        files.append(tmp_path / f"{index}.dcm")
        files[-1].write_bytes(dicom_bytes(ds))
    sop_of = {str(path): str(xray_to_sop(path)) for path in files}
    slow_png = tmp_path / "slow.png"  # a real X-ray, as PNG: hundreds of KB at 1 KB/s
    with PILImage.open(data_root / rows[0]["image"]) as picture:
        buffer = io.BytesIO()
        picture.convert("L").save(buffer, format="PNG")
    slow_png.write_bytes(buffer.getvalue())
    assert slow_png.stat().st_size > 100_000

    broker = start_mosquitto(lambda directory: write_broker_files(db, directory))
    redis = start_redis()
    port, dicom_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("COVIDET_")}
    env.update(
        COVIDET_HOME=str(home),
        COVIDET_QUEUE="celery",
        COVIDET_REDIS_URL=redis.url,
        COVIDET_MQTT_BROKER_HOST="127.0.0.1",
        COVIDET_MQTT_BROKER_PORT=str(broker.port),
        COVIDET_MQTT_USERNAME=INGEST_USER,
        COVIDET_MQTT_PASSWORD=INGEST_PASSWORD,
        COVIDET_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS),
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "covidet.cli", "serve", "--port", str(port),
             "--dicom-port", str(dicom_port), "--mqtt"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    clients: list[subprocess.Popen[bytes]] = []
    try:
        wait_for_port(port, timeout=300, process=server)
        wait_for_port(dicom_port, timeout=60, process=server)
        wait_until(lambda: "MQTT connected" in log_path.read_text(errors="replace"), 60, "the subscriber")

        upload = subprocess.Popen(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--limit-rate", "1k",
             "-H", f"X-API-Key: {phone.api_key}", "-F", f"file=@{slow_png}",
             f"http://127.0.0.1:{port}/api/v1/images"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        clients.append(upload)
        dicom = subprocess.Popen(
            [dcmtk("storescu"), "-v", "-aet", "LOADSCU", "-aec", "COVIDET", "127.0.0.1", str(dicom_port),
             *map(str, files)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dcmtk_env(),
        )  # fmt: skip
        clients.append(dicom)
        payloads = [
            reading("P-9", NOW - timedelta(seconds=200, milliseconds=10 * i)) for i in range(READINGS)
        ]
        mqtt = threading.Thread(
            target=publish_lines,
            args=(broker.port, (sensor.mqtt_username, sensor.mqtt_password), sensor.vitals_topic, payloads),
        )
        mqtt.start()
        # SIGTERM once every channel is busy: the first image stored, readings arriving.
        wait_until(lambda: count(db, Image) >= 1, 120, "the first image stored")
        wait_until(lambda: count(db, VitalSignRecord) >= 1, 60, "the first reading stored")
        assert upload.poll() is None, "the slow upload is still running"
        server.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # A liveness bound, not a speed figure: the old server waited for the upload (minutes).
        exit_code = server.wait(GRACE_SECONDS + 90)
        stopped_after = time.monotonic() - signalled
        mqtt.join(60)
        dicom_output = dicom.communicate(timeout=60)[0].decode(errors="replace")
        upload_code = upload.communicate(timeout=60)[0].decode().strip()
    finally:
        for process in (server, *clients):
            if process.poll() is None:
                process.kill()
                process.wait(10)
        log_text = log_path.read_text(errors="replace")
    assert exit_code == 0, log_text[-3000:]
    assert "SIGTERM: stopping covidet" in log_text
    assert "Traceback" not in log_text, log_text[-3000:]
    print(f"covidet serve exited {stopped_after:.1f} s after SIGTERM (grace {GRACE_SECONDS} s)")

    # The upload was cut off unanswered, so the phone still has its image.
    assert upload_code != "201"
    # Every image storescu saw acknowledged is stored, and still queued for analysis.
    acknowledged, current = [], None
    for line in dicom_output.splitlines():
        if match := re.search(r"Sending file: (\S+)", line):
            current = match.group(1)
        elif "Received Store Response (Success)" in line and current:
            acknowledged.append(sop_of[current])
    assert acknowledged, dicom_output
    with db.session() as session:
        images = {row.sop_instance_uid: row.status for row in session.scalars(select(Image))}
    assert set(acknowledged) <= set(images), "an acknowledged image is missing"
    assert set(images.values()) == {"queued"}

    # Readings: those covidet had not stored stay in the broker's session for covidet; the next
    # subscriber stores them all (the stop acknowledged nothing it had not stored).
    subscriber = VitalsSubscriber(db, port=broker.port, username=INGEST_USER, password=INGEST_PASSWORD)
    subscriber.start()
    try:
        wait_until(lambda: count(db, VitalSignRecord) == READINGS, 120, f"all {READINGS} readings stored")
    finally:
        subscriber.stop(timeout=5)
        broker.stop()
        redis.stop()
        db.dispose()


def xray_to_sop(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)

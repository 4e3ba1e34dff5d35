"""The whole assessment path with real clients: dcmtk's storescu sends a real chest X-ray to covidet's
DICOM receiver, the device simulator publishes the same patient's deteriorating vital signs over a
real Mosquitto, and covidet analyses, triages and raises the priority to urgent with its reasons.

Run twice: with the embedded in-process worker, and with `covidet worker` over a private Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from covidet.app.runner import start_services
from covidet.assessment.triage import news2_score
from covidet.config import get_settings
from covidet.ingest.mqtt import write_mosquitto_files
from covidet.simulate.sensors import SensorSimulator, SimulatedPatient, vital_series
from covidet.store import Database, Image, queries
from covidet.store.models import Alert, FindingRecord, Inference, TriageRecord, VitalSignRecord
from tests.servers import free_port

STORESCU = "/usr/bin/storescu"
PAYLOAD_TO_VITAL = {
    "spo2": "spo2_percent",
    "respiratory_rate": "respiratory_rate_per_min",
    "temperature": "temperature_c",
    "heart_rate": "heart_rate_per_min",
    "systolic_bp": "systolic_bp_mmhg",
}
INGEST_USER, INGEST_PASSWORD = "covidet-ingest", "ingest-password-for-tests"


def _deteriorating_series(patient_key: str) -> list[dict]:
    """The simulator's series of a covid19 patient, with the first seed whose last reading is a
    NEWS2 emergency on its own (SpO2 <= 91 %, partial NEWS2 >= 7): a rule the test can rely on."""
    for seed in range(200):
        series = vital_series(SimulatedPatient(patient_key, "covid19"), count=8, seed=seed, interval_s=30)
        last = series[-1]
        total = sum(news2_score(attribute, last[field]) for field, attribute in PAYLOAD_TO_VITAL.items())
        if last["spo2"] <= 91 and total >= 7:
            return series
    raise AssertionError("no simulator seed gives an emergency NEWS2")


@pytest.fixture
def deployment(tmp_path: Path):
    """Database with a modality and a sensor, and a private Mosquitto knowing the sensor."""
    from tests.servers import start_mosquitto

    database_url = f"sqlite:///{tmp_path / 'covidet.db'}"
    db = Database(database_url)
    with db.session(write=True) as session:
        modality = queries.create_device(session, "ward-dr", "modality", ae_title="WARD_DR")
        sensor = queries.create_device(session, "bed-7-monitor", "sensor")

    def write_files(directory: Path) -> None:
        with db.session() as session:
            write_mosquitto_files(
                session, directory, ingest_username=INGEST_USER, ingest_password=INGEST_PASSWORD
            )

    broker = start_mosquitto(write_files)
    yield {"db": db, "url": database_url, "modality": modality, "sensor": sensor, "broker": broker}
    broker.stop()
    db.dispose()


def _settings(tmp_path: Path, deployment: dict, **extra):
    return get_settings(
        home=tmp_path,
        database_url=deployment["url"],
        mqtt_broker_host="127.0.0.1",
        mqtt_broker_port=deployment["broker"].port,
        mqtt_username=INGEST_USER,
        mqtt_password=INGEST_PASSWORD,
        mqtt_client_id=f"covidet-ingest-{tmp_path.name}",
        **extra,
    )


def _send_and_publish(deployment: dict, dicom_port: int, xray: Path) -> str:
    done = subprocess.run(
        [STORESCU, "-aet", "WARD_DR", "-aec", "COVIDET", "127.0.0.1", str(dicom_port), str(xray)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    patient_key = str(dcmread(xray, stop_before_pixels=True).PatientID)
    sensor = deployment["sensor"]
    report = SensorSimulator(
        "127.0.0.1",
        deployment["broker"].port,
        device_id=sensor.device_id,
        username=sensor.mqtt_username,
        password=sensor.mqtt_password,
    ).publish(_deteriorating_series(patient_key))
    assert report.acknowledged == report.published == 8, report.to_json()
    return patient_key


def _wait_for_urgent(db: Database, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session() as session:
            if session.scalar(select(Image.priority)) == "urgent":
                return
        time.sleep(0.25)
    with db.session() as session:
        state = queries.counts(session)
    raise AssertionError(f"no urgent priority within {timeout} s; database holds {state}")


def _assert_assessed_urgent(db: Database, patient_key: str) -> None:
    with db.session() as session:
        image = session.scalars(select(Image)).one()
        assert image.status == "analysed" and image.study.patient.patient_key == patient_key
        inference = session.scalars(select(Inference)).one()
        assert inference.status == "succeeded" and inference.model_version
        assert session.scalars(select(FindingRecord)).all(), "the detector's findings are stored"
        assert len(session.scalars(select(VitalSignRecord)).all()) == 8
        latest = session.scalars(select(TriageRecord).order_by(TriageRecord.id.desc())).first()
        assert latest.priority == "urgent" and latest.vital_sign_ids
        assert any(reason.startswith("SpO2") for reason in latest.reasons), latest.reasons
        alert = session.scalars(select(Alert)).one()
        assert alert.image_id == image.id and alert.reasons == latest.reasons
        counts = queries.counts(session)
        assert counts["priorities"]["urgent"] == 1 and counts["inferences"] == 1


def test_in_process_deployment_raises_an_urgent_priority(tmp_path: Path, deployment, rg1_dicom: Path) -> None:
    settings = _settings(tmp_path, deployment)
    dicom_port = free_port()
    services = start_services(settings, dicom_port=dicom_port, mqtt=True)
    try:
        assert services.mqtt.wait_ready(15)
        patient_key = _send_and_publish(deployment, dicom_port, rg1_dicom)
        _wait_for_urgent(deployment["db"], timeout=90)
    finally:
        services.stop()
    _assert_assessed_urgent(deployment["db"], patient_key)


def test_celery_deployment_raises_an_urgent_priority(tmp_path: Path, deployment, rg1_dicom: Path) -> None:
    from tests.servers import start_redis

    redis = start_redis()
    settings = _settings(tmp_path, deployment, queue="celery", redis_url=redis.url)
    env = {
        **os.environ,
        "COVIDET_HOME": str(tmp_path),
        "COVIDET_DATABASE_URL": deployment["url"],
        "COVIDET_QUEUE": "celery",
        "COVIDET_REDIS_URL": redis.url,
        "COVIDET_THREADS": "1",
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "covidet.cli", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    dicom_port = free_port()
    services = start_services(settings, dicom_port=dicom_port, mqtt=True)
    try:
        assert services.mqtt.wait_ready(15)
        patient_key = _send_and_publish(deployment, dicom_port, rg1_dicom)
        _wait_for_urgent(deployment["db"], timeout=120)
    finally:
        services.stop()
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        log.close()
        redis.stop()
    _assert_assessed_urgent(deployment["db"], patient_key)

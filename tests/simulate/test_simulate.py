"""The device simulator against real peers: dcmtk's storescp receives the modality's C-STOREs, a
private Mosquitto (covidet's one starter, :func:`covidet.app.broker.start_mosquitto`, with the password
file and ACL covidet writes from its device table) carries the sensors' vitals to a paho subscriber.
Real X-rays of the dataset."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pydicom
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image
from typer.testing import CliRunner

from covidet.app.broker import start_mosquitto
from covidet.cli import app
from covidet.imaging.dicom_writer import DX_FOR_PRESENTATION
from covidet.ingest.mqtt import write_mosquitto_files
from covidet.simulate import (
    VITAL_FIELDS,
    VITAL_RANGES,
    ModalitySimulator,
    SensorSimulator,
    SimulatedPatient,
    load_cases,
    vital_messages,
)
from covidet.simulate.runner import patients_of
from covidet.store import Database, queries
from tests.servers import find_binary, free_port, wait_for_port

TOPICS = "covidet/devices/+/vitals"
#: The broker user of the test's subscriber (covidet's ingest user: it may read every device's vitals).
SUBSCRIBER_USER = "covidet-test-subscriber"


# ------------------------------------------------------------------------------------- real peers


@contextlib.contextmanager
def storescp(out_dir: Path) -> Iterator[int]:
    """dcmtk's Storage SCP writing every received object into ``out_dir``; yields its port."""
    binary = find_binary("storescp", "dcmtk", ("/usr/bin/storescp",))
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [binary, "-od", str(out_dir), "-aet", "COVIDET", str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process=process)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@dataclass(frozen=True)
class Broker:
    """A private Mosquitto on a free loopback port (never the system one on 1883) that lets one
    registered sensor (``device_id``, ``username``, ``password``: what ``covidet devices add`` prints)
    publish to its own topic only, and the subscriber read every device's vitals. Nobody else may
    connect."""

    port: int
    device_id: int
    username: str
    password: str
    subscriber_password: str


@contextlib.contextmanager
def mosquitto(directory: Path) -> Iterator[Broker]:
    """Register a sensor in a fresh covidet database and start a private Mosquitto whose password file
    and ACL covidet writes from that database (:func:`covidet.ingest.mqtt.write_mosquitto_files`)."""
    db = Database(f"sqlite:///{directory / 'devices.db'}")
    subscriber_password = secrets.token_urlsafe(12)

    def write_files(files_dir: Path) -> None:
        with db.session() as session:
            write_mosquitto_files(
                session, files_dir, ingest_username=SUBSCRIBER_USER, ingest_password=subscriber_password
            )

    try:
        with db.session(write=True) as session:
            sensor = queries.create_device(session, "bedside-monitor", "sensor")
        broker = start_mosquitto(write_files)
    finally:
        db.dispose()
    assert sensor.mqtt_username is not None and sensor.mqtt_password is not None
    try:
        yield Broker(
            broker.port, sensor.device_id, sensor.mqtt_username, sensor.mqtt_password, subscriber_password
        )
    finally:
        broker.stop()


class Subscriber:
    """A paho client subscribed (QoS 1) to every device's vitals topic, keeping what arrives."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._changed = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=SUBSCRIBER_USER)
        self.client.username_pw_set(SUBSCRIBER_USER, broker.subscriber_password)
        self.client.on_connect = lambda client, *_: client.subscribe(TOPICS, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert subscribed.wait(10), "subscription not confirmed"

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append((message.topic, json.loads(message.payload)))
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[tuple[str, dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.messages) < count and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def received_datasets(out_dir: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in sorted(out_dir.iterdir()) if path.is_file()]


def check_vitals_payload(payload: dict[str, Any]) -> None:
    """Exactly the fields covidet's subscriber validates, inside its ranges, UTC timestamp."""
    assert set(payload) == {"patient_id", "timestamp", *VITAL_FIELDS}
    assert isinstance(payload["patient_id"], str) and payload["patient_id"]
    measured_at = datetime.fromisoformat(payload["timestamp"])
    assert measured_at.utcoffset() is not None and measured_at.utcoffset().total_seconds() == 0
    for name, (low, high) in VITAL_RANGES.items():
        assert isinstance(payload[name], int | float) and low <= payload[name] <= high, (name, payload)


# ------------------------------------------------------------------------------------------- tests


def test_cases_are_stable_and_mix_labels(data_root: Path, tmp_path: Path) -> None:
    cases = load_cases(data_root, limit=6)
    assert [c.sop_instance_uid for c in cases] == [c.sop_instance_uid for c in load_cases(data_root, limit=6)]
    assert {c.label for c in cases} == {"covid19", "normal", "pneumonia"}
    assert all(c.patient_key.startswith("SIM-") and len(c.patient_key) <= 64 for c in cases)
    # One study per dataset patient, one SOP instance per image.
    by_patient: dict[str, set[str]] = {}
    for case in cases:
        by_patient.setdefault(case.patient_key, set()).add(case.study_instance_uid)
    assert all(len(studies) == 1 for studies in by_patient.values())
    assert len({c.sop_instance_uid for c in cases}) == len(cases)
    assert len(load_cases(data_root, split="all", limit=None)) > len(load_cases(data_root, limit=None))

    # A plain folder: label from the folder name, one patient per file.
    folder = tmp_path / "images" / "covid19"
    folder.mkdir(parents=True)
    for case in cases[:2]:
        shutil.copy(case.path, folder / case.path.name)
    (folder / "notes.txt").write_text("not an image")
    plain = load_cases(tmp_path / "images", limit=None)
    assert [c.label for c in plain] == ["covid19", "covid19"]
    assert len({c.patient_key for c in plain}) == 2
    with pytest.raises(FileNotFoundError):
        load_cases([tmp_path / "missing.png"])


def test_modality_sends_real_xrays_as_dx_dicom(data_root: Path, rg1_dicom: Path, tmp_path: Path) -> None:
    cases = load_cases(data_root, limit=4)
    with storescp(tmp_path / "received") as port:
        modality = ModalitySimulator("127.0.0.1", port, called_ae="COVIDET", calling_ae="XRAY-ROOM-1")
        report = modality.send(cases)
        assert report.to_json() | {"peer": None} == {
            "peer": None,
            "total": 4,
            "sent": 4,
            "acknowledged": 4,
            "failed": 0,
            "statuses": {"0x0000": 4},
            "failures": [],
        }
        # A list of files: a DICOM file goes as it is, with its own identifiers.
        as_files = ModalitySimulator("127.0.0.1", port).send(load_cases([rg1_dicom]))
        assert as_files.acknowledged == 1 and as_files.failed == 0

    received = {ds.SOPInstanceUID: ds for ds in received_datasets(tmp_path / "received")}
    original = pydicom.dcmread(rg1_dicom, stop_before_pixels=True)
    assert set(received) == {c.sop_instance_uid for c in cases} | {original.SOPInstanceUID}
    assert received[original.SOPInstanceUID].PatientID == original.PatientID
    for case in cases:
        ds = received[case.sop_instance_uid]
        assert ds.SOPClassUID == DX_FOR_PRESENTATION and ds.Modality == "DX"
        assert ds.PatientID == case.patient_key
        assert ds.StudyInstanceUID == case.study_instance_uid
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        with Image.open(case.path) as image:
            assert ds.pixel_array.shape == (image.height, image.width)
        assert ds.pixel_array.std() > 10  # a real radiograph, not a blank


def test_modality_reports_an_unreachable_receiver(data_root: Path) -> None:
    cases = load_cases(data_root, limit=3)
    report = ModalitySimulator("127.0.0.1", free_port(), timeout=5).send(cases)
    assert report.sent == 0 and report.acknowledged == 0 and report.failed == 3
    assert all("association" in failure["reason"] for failure in report.failures)


def test_sensors_publish_vitals_that_track_the_diagnosis(data_root: Path, tmp_path: Path) -> None:
    patients = patients_of(load_cases(data_root, limit=12))
    labels = {p.label for p in patients}
    assert {"covid19", "normal"} <= labels
    end = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    messages = vital_messages(patients, count=8, seed=3, end=end)
    # Deterministic with the seed; another seed gives other values.
    assert messages == vital_messages(patients, count=8, seed=3, end=end)
    assert messages != vital_messages(patients, count=8, seed=4, end=end)

    with mosquitto(tmp_path) as broker:
        subscriber = Subscriber(broker)
        try:
            sensors = SensorSimulator(
                "127.0.0.1", broker.port, device_id=broker.device_id, username=broker.username,
                password=broker.password,
            )  # fmt: skip
            report = sensors.publish(messages, rate=500)
            received = subscriber.wait_for(len(messages))
        finally:
            subscriber.close()
    assert report.published == report.acknowledged == len(messages) and report.failed == 0
    assert report.patients == len(patients)
    assert len(received) == len(messages)
    assert {topic for topic, _ in received} == {f"covidet/devices/{broker.device_id}/vitals"}
    for _, payload in received:
        check_vitals_payload(payload)
    assert [payload for _, payload in received] == messages  # QoS 1, one publisher: in order

    series: dict[str, list[dict[str, Any]]] = {}
    for _, payload in received:
        series.setdefault(payload["patient_id"], []).append(payload)
    label = {p.key: p.label for p in patients}
    for key, readings in series.items():
        assert len(readings) == 8
        spo2 = [r["spo2"] for r in readings]
        if label[key] == "covid19":  # desaturates, with fever and tachypnoea
            assert spo2[-1] <= 94 and spo2[0] - spo2[-1] >= 3, spo2
            assert readings[-1]["temperature"] >= 37.8 and readings[-1]["respiratory_rate"] >= 21
        elif label[key] == "normal":  # stays normal
            assert min(spo2) >= 94, spo2
            assert max(r["temperature"] for r in readings) < 37.6
            assert max(r["respiratory_rate"] for r in readings) <= 20


def test_sensors_report_broker_failures(tmp_path: Path) -> None:
    messages = vital_messages([SimulatedPatient("P1", "normal")], count=3)
    report = SensorSimulator("127.0.0.1", free_port(), device_id=1, timeout=5).publish(messages)
    assert report.published == 0 and report.failed == 3
    assert "cannot connect" in report.errors[0]
    with mosquitto(tmp_path) as broker:
        wrong = SensorSimulator(
            "127.0.0.1", broker.port, device_id=broker.device_id, username=broker.username, password="wrong"
        )
        report = wrong.publish(messages)
        anonymous = SensorSimulator("127.0.0.1", broker.port, device_id=broker.device_id).publish(messages)
    assert report.published == 0 and report.failed == 3
    assert "refused the connection" in report.errors[0]
    assert anonymous.published == 0 and anonymous.failed == 3
    assert "refused the connection" in anonymous.errors[0]


def test_simulate_command(data_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    with storescp(tmp_path / "received") as dicom_port, mosquitto(tmp_path) as broker:
        subscriber = Subscriber(broker)
        try:
            result = runner.invoke(
                app,
                [
                    "simulate", "--data", str(data_root), "--limit", "3", "--seed", "1",
                    "--dicom-port", str(dicom_port), "--calling-ae", "XRAY-ROOM-1",
                    "--broker-host", "127.0.0.1", "--broker-port", str(broker.port),
                    "--sensor-device-id", str(broker.device_id), "--mqtt-username", broker.username,
                    "--mqtt-password", broker.password, "--vitals-count", "4", "--vitals-rate", "0",
                    "--no-progress",
                ],
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            summary = json.loads(result.stdout)
            received = subscriber.wait_for(summary["vitals"]["published"])
        finally:
            subscriber.close()
    assert summary["ok"] is True
    assert summary["images"]["acknowledged"] == 3 and summary["images"]["failed"] == 0
    patients = {p["patient_id"] for p in summary["patients"]}
    assert summary["vitals"]["published"] == summary["vitals"]["acknowledged"] == 4 * len(patients)
    assert summary["vitals"]["topic"] == f"covidet/devices/{broker.device_id}/vitals"
    assert {payload["patient_id"] for _, payload in received} == patients
    assert {ds.PatientID for ds in received_datasets(tmp_path / "received")} == patients

    # Usage errors: exit 2 with a one-line message; an unreachable receiver: exit 1 with the summary.
    nothing = runner.invoke(app, ["simulate", "--data", str(data_root), "--no-images", "--no-vitals"])
    assert nothing.exit_code == 2
    no_device = runner.invoke(app, ["simulate", "--data", str(data_root), "--no-images"])
    assert no_device.exit_code == 2 and "--sensor-device-id" in no_device.output
    unreachable = runner.invoke(
        app,
        ["simulate", "--data", str(data_root), "--limit", "2", "--no-vitals", "--no-progress",
         "--dicom-port", str(free_port()), "--timeout", "5"],
    )  # fmt: skip
    assert unreachable.exit_code == 1
    assert json.loads(unreachable.stdout)["images"]["failed"] == 2


def test_simulator_does_not_import_torch() -> None:
    code = "import sys, covidet.simulate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

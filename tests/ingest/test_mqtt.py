"""MQTT vital signs end to end: a private Mosquitto (tests/servers.py), real publishers (mosquitto_pub,
paho-mqtt), the covidet subscriber, and the rows it leaves in SQLite and PostgreSQL.

Nothing is mocked. Missing binaries (mosquitto, mosquitto_pub, openssl) fail the tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import func, select, update

from covidet.ingest.mqtt import (
    VitalsRejected,
    VitalsSubscriber,
    device_id_from_topic,
    parse_vitals,
    write_mosquitto_files,
)
from covidet.store import Database, Device, Patient, RejectedMessage, VitalSignRecord, queries
from covidet.store.queries import DeviceCredentials
from tests.servers import MosquittoHandle, find_binary, start_mosquitto

REPO_ROOT = Path(__file__).resolve().parents[2]
INGEST_USER, INGEST_PASSWORD = "covidet-ingest", "ingest-secret-1"
#: A test-only broker user that may publish anywhere under covidet/: it sends what no device can.
TESTER_USER, TESTER_PASSWORD = "tester", "tester-secret-1"
NOW = datetime.now(UTC).replace(microsecond=0)


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.05)


def reading(patient: str = "P-001", at: datetime | None = None, **values: Any) -> bytes:
    values = values or {"spo2": 94.0}
    return json.dumps({"patient_id": patient, "timestamp": (at or NOW).isoformat(), **values}).encode()


# ------------------------------------------------------------------------------------------- fixtures


def write_broker_files(db: Database, directory: Path) -> None:
    """covidet's broker files, plus the test-only user appended (the files are rewritten on each call)."""
    with db.session() as session:
        write_mosquitto_files(
            session, directory, ingest_username=INGEST_USER, ingest_password=INGEST_PASSWORD
        )
    with (directory / "passwd").open("a") as handle:
        handle.write(f"{TESTER_USER}:{queries.mosquitto_password_hash(TESTER_PASSWORD)}\n")
    with (directory / "acl").open("a") as handle:
        handle.write(f"\nuser {TESTER_USER}\ntopic write covidet/#\n")


@dataclass
class Setup:
    """A database, a broker whose files were written from it, and how to start subscribers."""

    db: Database
    broker: MosquittoHandle
    start_subscriber: Callable[..., VitalsSubscriber]

    def add_sensor(self, name: str) -> DeviceCredentials:
        with self.db.session(write=True) as session:
            credentials = queries.create_device(session, name, "sensor")
        self.write_files(self.broker.files_dir)
        self.broker.reload()
        return credentials

    def write_files(self, directory: Path) -> None:
        write_broker_files(self.db, directory)

    def vitals(self) -> list[VitalSignRecord]:
        with self.db.session() as session:
            return list(session.scalars(select(VitalSignRecord).order_by(VitalSignRecord.measured_at)))

    def count(self, model: Any) -> int:
        return count_rows(self.db, model)

    def rejected(self) -> list[RejectedMessage]:
        return rejected_rows(self.db)


def count_rows(db: Database, model: Any) -> int:
    """Rows of ``model``'s table."""
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def rejected_rows(db: Database) -> list[RejectedMessage]:
    """``rejected_messages`` in the order written."""
    with db.session() as session:
        return list(session.scalars(select(RejectedMessage).order_by(RejectedMessage.id)))


@pytest.fixture
def make_setup() -> Iterator[Callable[..., Setup]]:
    """``make_setup(url, tls=False)``: database at ``url`` (migrated), broker, subscriber factory."""
    brokers: list[MosquittoHandle] = []
    subscribers: list[VitalsSubscriber] = []
    databases: list[Database] = []

    def make(url: str, *, tls: bool = False) -> Setup:
        db = Database(url)
        databases.append(db)

        broker = start_mosquitto(lambda directory: write_broker_files(db, directory), tls=tls)
        brokers.append(broker)

        def start_subscriber(**options: Any) -> VitalsSubscriber:
            options = {
                "port": broker.port,
                "username": INGEST_USER,
                "password": INGEST_PASSWORD,
                "reconnect_delay_s": (1, 2),
                **options,
            }
            subscriber = VitalsSubscriber(db, **options)
            subscribers.append(subscriber)
            subscriber.start()
            assert subscriber.wait_ready(15), "subscriber did not connect and subscribe"
            return subscriber

        return Setup(db=db, broker=broker, start_subscriber=start_subscriber)

    yield make
    for subscriber in subscribers:
        subscriber.stop(timeout=5)
    for broker in brokers:
        broker.stop()
    for db in databases:
        db.dispose()


@pytest.fixture
def setup(make_setup: Callable[..., Setup], database_url: str) -> Setup:
    """Database on each backend (SQLite, PostgreSQL) plus broker."""
    return make_setup(database_url)


@pytest.fixture
def sqlite_setup(make_setup: Callable[..., Setup], tmp_path: Path) -> Setup:
    """SQLite only: for behaviour of the broker and the subscriber that does not depend on the backend."""
    return make_setup(f"sqlite:///{tmp_path / 'covidet.db'}")


def mosquitto_pub(
    port: int, credentials: tuple[str, str], topic: str, payload: bytes, *extra: str
) -> subprocess.CompletedProcess[str]:
    """One QoS-1 message with Debian's mosquitto_pub (MQTT v3.1.1)."""
    binary = find_binary("mosquitto_pub", "mosquitto-clients", ("/usr/bin/mosquitto_pub",))
    return subprocess.run(
        [binary, "-h", "127.0.0.1", "-p", str(port), "-u", credentials[0], "-P", credentials[1], "-q", "1",
         "-t", topic, "-m", payload.decode(), *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip


class Publisher:
    """A paho-mqtt MQTT v5 publisher that records the broker's PUBACK reason code of each message."""

    def __init__(self, port: int, username: str, password: str, *, max_inflight: int = 20) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.username_pw_set(username, password)
        self.connack: ReasonCode | None = None
        self.acks: dict[int, ReasonCode] = {}
        self._connected = threading.Event()

        def on_connect(client: Any, userdata: Any, flags: Any, reason_code: ReasonCode, props: Any) -> None:
            self.connack = reason_code
            self._connected.set()

        def on_publish(client: Any, userdata: Any, mid: int, reason_code: ReasonCode, props: Any) -> None:
            self.acks[mid] = reason_code

        self.client.on_connect = on_connect
        self.client.on_publish = on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._connected.wait(10), "no CONNACK"

    def publish(self, topic: str, payloads: list[bytes], timeout: float = 30.0) -> list[ReasonCode]:
        """Publish with QoS 1 and wait for every PUBACK; their reason codes, in order."""
        mids = [self.client.publish(topic, payload, qos=1).mid for payload in payloads]
        wait_until(lambda: all(mid in self.acks for mid in mids), timeout, "PUBACKs")
        return [self.acks[mid] for mid in mids]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------------------------------- payloads


def test_parse_vitals_accepts_a_reading_and_converts_the_time_to_utc() -> None:
    vital = parse_vitals(
        b'{"patient_id": " P-7 ", "timestamp": "2024-05-01T10:30:00+02:00", "spo2": 91, "temperature": 38.4,'
        b' "heart_rate": 112, "respiratory_rate": 26, "systolic_bp": 95.5}',
        now=datetime(2024, 5, 1, 9, 0, tzinfo=UTC),
    )
    assert vital.patient_id == "P-7"
    assert vital.measured_at == datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
    assert vital.measured_at.utcoffset() == timedelta(0)
    assert (vital.spo2_percent, vital.temperature_c, vital.heart_rate_per_min) == (91.0, 38.4, 112.0)
    assert (vital.respiratory_rate_per_min, vital.systolic_bp_mmhg) == (26.0, 95.5)


#: The start of a payload with a patient and a valid timestamp.
P1 = b'{"patient_id": "P1", "timestamp": "2024-05-01T08:00:00Z", '


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed JSON: key must be a string at line 1 column 2"),
        (b"\xff\xfe", "malformed JSON"),
        (b"[1, 2]", "payload is not a JSON object"),
        (b'{"timestamp": "2024-05-01T08:00:00Z", "spo2": 95}', "patient_id: Field required"),
        (b'{"patient_id": "P1", "spo2": 95}', "timestamp: Field required"),
        (b'{"patient_id": "P1", "timestamp": "2024-05-01T08:00:00Z"}', "no measurement: give at least one"),
        (b'{"patient_id": "P1", "timestamp": "2024-05-01T08:00:00", "spo2": 95}', "has no UTC offset"),
        (b'{"patient_id": "P1", "timestamp": 1714550400, "spo2": 95}', "must be an ISO 8601 string"),
        (b'{"patient_id": "P1", "timestamp": "2024-05-01T09:06:00Z", "spo2": 95}', "more than 300 s after"),
        (b'{"patient_id": "P1", "timestamp": "1970-01-01T00:00:00Z", "spo2": 95}', "before 2000-01-01"),
        (b'{"patient_id": 17, "timestamp": "2024-05-01T08:00:00Z", "spo2": 95}', "patient_id: Input should"),
        (b'{"patient_id": "  ", "timestamp": "2024-05-01T08:00:00Z", "spo2": 95}', "patient_id: must be"),
        (P1 + b'"SpO2": 95}', "SpO2: Extra inputs"),
        (P1 + b'"spo2": "95"}', "spo2: Input should be"),
        (P1 + b'"spo2": true}', "spo2: Input should be"),
        (P1 + b'"spo2": NaN}', "spo2"),
        (P1 + b'"spo2": 49.9}', "greater than or equal to 50"),
        (P1 + b'"spo2": 100.1}', "less than or equal to 100"),
        (P1 + b'"temperature": 45.5}', "temperature: Input"),
        (P1 + b'"temperature": 29}', "temperature: Input"),
        (P1 + b'"heart_rate": 301}', "heart_rate: Input"),
        (P1 + b'"heart_rate": 19}', "heart_rate: Input"),
        (P1 + b'"respiratory_rate": 81}', "respiratory_rate"),
        (P1 + b'"respiratory_rate": 1}', "respiratory_rate"),
        (P1 + b'"systolic_bp": 39}', "systolic_bp: Input"),
        (P1 + b'"systolic_bp": 301}', "systolic_bp: Input"),
        (b"{" + b" " * 17000 + b"}", "payload of 17002 bytes exceeds 16384 bytes"),
        # Regressions from tests/ingest/test_mqtt_fuzz.py: an OverflowError escaped the parser...
        (b'{"patient_id": "P1", "timestamp": "9999-12-31T23:59:59-01:00", "spo2": 95}',
         "timestamp: is out of range once converted to UTC (got '9999-12-31T23:59:59-01:00')"),
        # ... and a field name with a newline made a two-line reason (a forged log line).
        (P1 + b'"spo2": 95, "a\\nFORGED": 1}', "a\\nFORGED: Extra inputs are not permitted"),
        (P1.replace(b'"P1"', b'"' + b"x" * 300 + b'"') + b'"spo2": 95}', "(got 'xxxxxxxxx"),
    ],
)  # fmt: skip
def test_parse_vitals_rejects_with_a_precise_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(VitalsRejected) as caught:
        parse_vitals(payload, now=datetime(2024, 5, 1, 9, 0, tzinfo=UTC))
    assert reason in caught.value.reason
    # One line, and a value quoted from the payload is cut at 100 characters.
    assert caught.value.reason.isprintable() and len(caught.value.reason) < 250


def test_parse_vitals_applies_the_configured_size_limit() -> None:
    payload = reading()
    assert parse_vitals(payload, max_bytes=len(payload)).spo2_percent == 94.0
    with pytest.raises(
        VitalsRejected, match=f"payload of {len(payload)} bytes exceeds {len(payload) - 1} bytes"
    ):
        parse_vitals(payload, max_bytes=len(payload) - 1)


def test_parse_vitals_reports_every_offending_field_with_its_value() -> None:
    with pytest.raises(VitalsRejected) as caught:
        parse_vitals(reading(spo2=120, heart_rate=400))
    assert caught.value.reason == (
        "spo2: Input should be less than or equal to 100 (got 120); "
        "heart_rate: Input should be less than or equal to 300 (got 400)"
    )


def test_device_id_from_topic() -> None:
    assert device_id_from_topic("covidet/devices/42/vitals") == 42
    for topic in ("covidet/devices/abc/vitals", "covidet/devices/0/vitals", "covidet/devices/4/vitals/x"):
        with pytest.raises(VitalsRejected, match="is not covidet/devices/<device id>/vitals"):
            device_id_from_topic(topic)


# ------------------------------------------------------------------------------------- store and files


def test_add_vital_signs_skips_rows_already_stored(database_url: str) -> None:
    db = Database(database_url)
    try:
        with db.session(write=True) as session:
            device = queries.create_device(session, "bed-1", "sensor")
            patient = queries.get_or_create_patient(session, "P1")
            rows = [
                {
                    "device_id": device.device_id,
                    "patient_id": patient.id,
                    "measured_at": NOW + timedelta(seconds=i),
                    "spo2_percent": 90.0 + i,
                }
                for i in range(3)
            ]
            assert queries.add_vital_signs(session, rows) == 3
        with db.session(write=True) as session:
            # A redelivery of the first two (also once twice in the same call) and one new reading.
            again = [*rows[:2], rows[0], {**rows[0], "measured_at": NOW + timedelta(minutes=5)}]
            assert queries.add_vital_signs(session, again) == 1
            assert queries.add_vital_signs(session, []) == 0
        with db.session() as session:
            stored = list(session.scalars(select(VitalSignRecord).order_by(VitalSignRecord.measured_at)))
        assert [row.spo2_percent for row in stored] == [90.0, 91.0, 92.0, 90.0]
        assert stored[0].measured_at == NOW and stored[0].received_at.tzinfo is not None
        assert stored[0].temperature_c is None
    finally:
        db.dispose()


def test_write_mosquitto_files(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'covidet.db'}")
    try:
        with db.session(write=True) as session:
            a = queries.create_device(session, "bed-a", "sensor")
            queries.create_device(session, "xray", "modality")
            b = queries.create_device(session, "bed-b", "sensor")
            off = queries.create_device(session, "bed-off", "sensor")
            session.execute(update(Device).where(Device.id == off.device_id).values(active=False))
        directory = tmp_path / "mosquitto"
        with db.session() as session:
            files = write_mosquitto_files(
                session, directory, ingest_username=INGEST_USER, ingest_password=INGEST_PASSWORD
            )
            stored_hash = session.get(Device, a.device_id).mqtt_password_hash
        with (
            pytest.raises(ValueError, match="both a user name and a password"),
            db.session() as session,
        ):
            write_mosquitto_files(session, directory, ingest_username=INGEST_USER)
    finally:
        db.dispose()
    assert files.devices == 2 and files.ingest_user == INGEST_USER
    passwd = files.password_file.read_text().splitlines()
    assert [line.split(":")[0] for line in passwd] == [INGEST_USER, a.mqtt_username, b.mqtt_username]
    assert passwd[1] == f"{a.mqtt_username}:{stored_hash}"
    assert passwd[0].split(":", 1)[1].startswith("$7$")
    acl = [line for line in files.acl_file.read_text().splitlines() if line and not line.startswith("#")]
    assert acl == [
        f"user {INGEST_USER}", "topic read covidet/devices/+/vitals",
        f"user {a.mqtt_username}", f"topic write covidet/devices/{a.device_id}/vitals",
        f"user {b.mqtt_username}", f"topic write covidet/devices/{b.device_id}/vitals",
    ]  # fmt: skip
    assert f"password_file {files.password_file}" in files.example_config.read_text()
    assert sorted(p.name for p in directory.iterdir()) == ["acl", "mosquitto.conf.example", "passwd"]
    for path in (files.password_file, files.acl_file):
        mode = path.stat().st_mode & 0o777
        assert mode in (0o640, 0o644)
    if os.geteuid() == 0:
        # As root the files go to group mosquitto, mode 0640: the broker reads them after dropping root.
        import grp

        assert files.password_file.stat().st_mode & 0o777 == 0o640
        assert grp.getgrgid(files.password_file.stat().st_gid).gr_name == "mosquitto"


# ------------------------------------------------------------------------------------- through the broker


def test_published_vitals_are_stored(setup: Setup) -> None:
    sensor = setup.add_sensor("bed-12-monitor")
    setup.start_subscriber()
    at = (NOW - timedelta(minutes=2)).astimezone(timezone(timedelta(hours=2)))  # a non-UTC offset on the wire
    result = mosquitto_pub(
        setup.broker.port,
        (sensor.mqtt_username, sensor.mqtt_password),
        sensor.vitals_topic,
        reading("P-100", at, spo2=93, temperature=38.6, heart_rate=104, respiratory_rate=22, systolic_bp=118),
    )
    assert result.returncode == 0, result.stderr
    publisher = Publisher(setup.broker.port, sensor.mqtt_username, sensor.mqtt_password)
    try:
        codes = publisher.publish(
            sensor.vitals_topic, [reading("P-101", NOW - timedelta(minutes=1), spo2=97.5)]
        )
    finally:
        publisher.close()
    assert [code.is_failure for code in codes] == [False]

    rows = wait_until(lambda: len(setup.vitals()) == 2 and setup.vitals(), message="2 rows")
    first, second = rows
    assert first.measured_at == NOW - timedelta(minutes=2) and first.measured_at.utcoffset() == timedelta(0)
    assert (first.spo2_percent, first.temperature_c, first.heart_rate_per_min) == (93.0, 38.6, 104.0)
    assert (first.respiratory_rate_per_min, first.systolic_bp_mmhg) == (22.0, 118.0)
    assert first.device_id == sensor.device_id
    assert (second.spo2_percent, second.temperature_c) == (97.5, None)
    with setup.db.session() as session:
        patients = {p.id: p.patient_key for p in session.scalars(select(Patient))}
    assert patients[first.patient_id] == "P-100" and patients[second.patient_id] == "P-101"
    assert setup.rejected() == []


def test_messages_published_while_the_subscriber_is_down_are_stored_once(setup: Setup) -> None:
    sensor = setup.add_sensor("bed-3-oximeter")
    subscriber = setup.start_subscriber()
    subscriber.stop()  # the broker keeps the session (and queues for it) while covidet is away
    payloads = [reading("P-3", NOW - timedelta(seconds=i), spo2=90 + i % 10) for i in range(60)]
    publisher = Publisher(setup.broker.port, sensor.mqtt_username, sensor.mqtt_password)
    try:
        assert not any(code.is_failure for code in publisher.publish(sensor.vitals_topic, payloads))
        time.sleep(0.3)
        assert setup.count(VitalSignRecord) == 0

        restarted = setup.start_subscriber()
        wait_until(lambda: setup.count(VitalSignRecord) == 60, message="60 stored rows")
        # A device that resends (e.g. it missed the PUBACK) changes nothing.
        assert not any(code.is_failure for code in publisher.publish(sensor.vitals_topic, payloads[:5]))
        wait_until(lambda: restarted.stats().duplicates == 5, message="5 duplicates")
    finally:
        publisher.close()
    assert setup.count(VitalSignRecord) == 60
    assert restarted.stats().stored == 60 and restarted.stats().received == 65
    assert sorted(row.spo2_percent for row in setup.vitals()) == sorted(90.0 + i % 10 for i in range(60))


def test_the_session_survives_broker_restarts_and_the_subscriber_reconnects(sqlite_setup: Setup) -> None:
    setup = sqlite_setup
    sensor = setup.add_sensor("bed-8-monitor")
    setup.start_subscriber().stop()
    credentials = (setup.broker.port, sensor.mqtt_username, sensor.mqtt_password)
    publisher = Publisher(*credentials)
    try:
        publisher.publish(
            sensor.vitals_topic, [reading("P-8", NOW - timedelta(seconds=i)) for i in range(20)]
        )
    finally:
        publisher.close()
    setup.broker.restart()  # the queued messages and the subscriber's session go to disk and back
    subscriber = setup.start_subscriber()
    wait_until(lambda: setup.count(VitalSignRecord) == 20, message="20 rows after the broker restart")

    setup.broker.restart()  # ... now under a running subscriber: it reconnects by itself
    publisher = Publisher(*credentials)
    try:
        publisher.publish(sensor.vitals_topic, [reading("P-8", NOW - timedelta(minutes=1))])
    finally:
        publisher.close()
    wait_until(lambda: setup.count(VitalSignRecord) == 21, message="the reading after the reconnect")
    assert subscriber.wait_ready(10)
    assert subscriber.stats().stored == 21


def test_invalid_messages_are_rejected_with_their_reason(setup: Setup) -> None:
    sensor = setup.add_sensor("bed-5-monitor")
    retired = setup.add_sensor("bed-6-retired")
    with setup.db.session(write=True) as session:
        modality = queries.create_device(session, "xray-room", "modality")
        session.execute(update(Device).where(Device.id == retired.device_id).values(active=False))
    subscriber = setup.start_subscriber()
    bad = [
        b"{not json",
        reading(spo2=101),
        b'{"patient_id": "P-5", "spo2": 95}',
        reading(heart_rate=80, pulse=80),
    ]
    publisher = Publisher(setup.broker.port, sensor.mqtt_username, sensor.mqtt_password)
    tester = Publisher(setup.broker.port, TESTER_USER, TESTER_PASSWORD)
    try:
        publisher.publish(sensor.vitals_topic, bad)
        tester.publish("covidet/devices/9999/vitals", [reading()])
        tester.publish(f"covidet/devices/{modality.device_id}/vitals", [reading()])
        tester.publish(f"covidet/devices/{retired.device_id}/vitals", [reading()])
        tester.publish("covidet/devices/abc/vitals", [reading()])
        # ... and the subscriber keeps working.
        publisher.publish(sensor.vitals_topic, [reading("P-5", spo2=96)])
    finally:
        publisher.close()
        tester.close()
    wait_until(lambda: setup.count(VitalSignRecord) == 1, message="the valid reading")
    wait_until(lambda: subscriber.stats().rejected == 8, message="8 rejected")
    rejected = setup.rejected()
    assert [(row.channel, row.source) for row in rejected[:4]] == [("mqtt", sensor.vitals_topic)] * 4
    reasons = [row.reason for row in rejected]
    assert reasons == [
        "malformed JSON: key must be a string at line 1 column 2",
        "spo2: Input should be less than or equal to 100 (got 101)",
        "timestamp: Field required",
        "pulse: Extra inputs are not permitted",
        "unknown device 9999",
        f"device {modality.device_id} (xray-room) is a modality, not a sensor",
        f"device {retired.device_id} (bed-6-retired) is inactive",
        "topic 'covidet/devices/abc/vitals' is not covidet/devices/<device id>/vitals",
    ]
    assert rejected[0].payload == b"{not json"
    assert rejected[-1].source == "covidet/devices/abc/vitals"
    assert setup.vitals()[0].spo2_percent == 96.0


def test_the_broker_refuses_other_devices_topics_and_wrong_passwords(sqlite_setup: Setup) -> None:
    setup = sqlite_setup
    first, second = setup.add_sensor("bed-1"), setup.add_sensor("bed-2")
    setup.start_subscriber()
    intruder = Publisher(setup.broker.port, first.mqtt_username, first.mqtt_password)
    owner = Publisher(setup.broker.port, second.mqtt_username, second.mqtt_password)
    try:
        # MQTT v5 tells the publisher: PUBACK reason code 0x87 "Not authorized".
        [code] = intruder.publish(second.vitals_topic, [reading("P-X", spo2=88)])
        assert code.is_failure and code.value == 0x87 and code.getName() == "Not authorized"
        [code] = owner.publish(second.vitals_topic, [reading("P-Y", spo2=97)])
        assert not code.is_failure
    finally:
        intruder.close()
        owner.close()
    rows = wait_until(setup.vitals, message="the owner's reading")
    time.sleep(0.3)
    assert [(row.device_id, row.spo2_percent) for row in setup.vitals()] == [(second.device_id, 97.0)]
    assert rows and setup.rejected() == []

    wrong = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, reconnect_on_failure=False)
    wrong.username_pw_set(first.mqtt_username, "not-the-password")
    refused: list[ReasonCode] = []
    wrong.on_connect = lambda client, userdata, flags, code, props: refused.append(code)
    wrong.connect("127.0.0.1", setup.broker.port)
    wrong.loop_start()
    try:
        wait_until(lambda: refused, 10, "CONNACK")
    finally:
        wrong.loop_stop()
    assert refused[0].is_failure and refused[0].getName() in {"Not authorized", "Bad user name or password"}
    # MQTT v3.1.1 (mosquitto_pub): the connection is refused, nothing is sent.
    result = mosquitto_pub(setup.broker.port, (first.mqtt_username, "nope"), first.vitals_topic, reading())
    assert result.returncode != 0 and "not authori" in result.stderr.lower()


def test_subscriber_and_sensor_over_tls(make_setup: Callable[..., Setup], tmp_path: Path) -> None:
    setup = make_setup(f"sqlite:///{tmp_path / 'covidet.db'}", tls=True)
    sensor = setup.add_sensor("bed-tls")
    tls = setup.broker.tls
    assert tls is not None and setup.broker.tls_port is not None
    subscriber = setup.start_subscriber(port=setup.broker.tls_port, tls_ca=tls.ca_cert)
    result = mosquitto_pub(
        setup.broker.tls_port,
        (sensor.mqtt_username, sensor.mqtt_password),
        sensor.vitals_topic,
        reading("P-TLS", spo2=95),
        "--cafile",
        str(tls.ca_cert),
    )
    assert result.returncode == 0, result.stderr
    wait_until(lambda: setup.count(VitalSignRecord) == 1, message="the TLS reading")
    assert setup.vitals()[0].spo2_percent == 95.0 and subscriber.stats().stored == 1
    assert f"on port {setup.broker.tls_port}" in setup.broker.log()


# ------------------------------------------------------------------------------------- the CLI


def covidet_env(tmp_path: Path, url: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "COVIDET_HOME": str(tmp_path / "home"),
        "COVIDET_DATABASE_URL": url,
        "COVIDET_MQTT_BROKER_PORT": str(port),
        "COVIDET_MQTT_USERNAME": INGEST_USER,
        "COVIDET_MQTT_PASSWORD": INGEST_PASSWORD,
        "COVIDET_MOSQUITTO_DIR": str(tmp_path / "mosquitto"),
        "PYTHONPATH": str(REPO_ROOT / "src"),
    }


def test_mqtt_ingest_killed_mid_stream_loses_nothing(sqlite_setup: Setup, tmp_path: Path) -> None:
    """SIGKILL `covidet mqtt-ingest` while it stores a stream, restart it: every reading is stored once."""
    setup = sqlite_setup
    sensor = setup.add_sensor("bed-7-monitor")
    env = covidet_env(tmp_path, setup.db.url, setup.broker.port)
    command = [sys.executable, "-m", "covidet.cli", "mqtt-ingest", "--batch-size", "20", "--log-every", "1"]

    def ingest() -> subprocess.Popen[bytes]:
        log = (tmp_path / "ingest.log").open("ab")
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log)

    first = ingest()
    wait_until(
        lambda: "MQTT connected" in (tmp_path / "ingest.log").read_text(), 30, "mqtt-ingest to connect"
    )
    time.sleep(0.3)  # the subscription follows the connection
    total = 3000
    payloads = [reading(f"P-{i % 7}", NOW - timedelta(seconds=i), spo2=90 + i % 10) for i in range(total)]
    publisher = Publisher(setup.broker.port, sensor.mqtt_username, sensor.mqtt_password, max_inflight=100)
    codes: list[ReasonCode] = []
    sending = threading.Thread(target=lambda: codes.extend(publisher.publish(sensor.vitals_topic, payloads)))
    sending.start()
    try:
        wait_until(lambda: setup.count(VitalSignRecord) > 0, message="some rows")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        after_kill = setup.count(VitalSignRecord)
        sending.join(60)
    finally:
        publisher.close()
    assert len(codes) == total and not any(code.is_failure for code in codes)
    assert 0 < after_kill < total

    second = ingest()
    try:
        wait_until(lambda: setup.count(VitalSignRecord) == total, 60, f"{total} rows")
        # The counters are logged every --log-every seconds.
        wait_until(
            lambda: f"{total - after_kill} stored" in (tmp_path / "ingest.log").read_text(), 10, "counts"
        )
        assert setup.count(VitalSignRecord) == total
    finally:
        second.send_signal(signal.SIGTERM)
        out, _ = second.communicate(timeout=20)
    assert second.returncode == 0
    assert out == b""  # stdout is for data; the service logs on stderr
    log = (tmp_path / "ingest.log").read_text()
    assert "SIGTERM received: stopping the MQTT subscriber" in log
    assert "MQTT subscriber stopped: IngestStats(" in log
    assert setup.rejected() == []


def test_devices_add_writes_the_broker_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from typer.testing import CliRunner

    from covidet.cli import app

    env = covidet_env(tmp_path, f"sqlite:///{tmp_path / 'covidet.db'}", 1883)
    with caplog.at_level("INFO", logger="covidet"):
        result = CliRunner().invoke(app, ["devices", "add", "bed-9", "--kind", "sensor"], env=env)
    assert result.exit_code == 0, result.output
    credentials = json.loads(result.stdout)  # stdout is exactly the JSON document
    directory = tmp_path / "mosquitto"
    passwd = (directory / "passwd").read_text()
    assert f"{credentials['mqtt_username']}:$7$" in passwd and f"{INGEST_USER}:$7$" in passwd
    assert f"topic write covidet/devices/{credentials['device_id']}/vitals" in (directory / "acl").read_text()
    assert any(str(directory) in record.getMessage() for record in caplog.records)

    result = CliRunner().invoke(app, ["devices", "add", "xray-2", "--kind", "modality"], env=env)
    assert result.exit_code == 0 and json.loads(result.stdout)["mqtt_username"] is None

    # Rewriting on demand, e.g. after the subscriber's password changed.
    result = CliRunner().invoke(
        app,
        ["mqtt-broker-files", "--dir", str(tmp_path / "elsewhere")],
        env=env | {"COVIDET_MQTT_PASSWORD": "new"},
    )
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    assert written["devices"] == 1 and written["ingest_user"] == INGEST_USER
    assert Path(written["password_file"]).read_text() != passwd

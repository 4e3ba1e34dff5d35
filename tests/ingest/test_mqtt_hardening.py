"""The MQTT port under attack and misconfiguration, against a real Mosquitto that runs the configuration
covidet generates (``mosquitto_config``, the text of ``mosquitto.conf.example``), started by the one
private-broker helper of the tests (:func:`tests.servers.start_mosquitto`, i.e.
:func:`covidet.app.broker.start_mosquitto`), with real clients: mosquitto_sub and mosquitto_pub
(MQTT v3.1.1), paho-mqtt (v5) and the covidet subscriber.

- a sensor's login that connects with the subscriber's client id neither disconnects the subscriber nor
  destroys its persistent session and the QoS-1 readings queued in it (``use_username_as_clientid``);
- payloads over the limit are dropped by the broker, refused on arrival by the subscriber, and a far
  larger one never reaches it (MQTT v5 Maximum Packet Size);
- a broker certificate the configured CA does not verify is logged as a certificate failure.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from covidet.ingest.mqtt import (
    MAX_PAYLOAD_BYTES,
    VitalsSubscriber,
    max_packet_bytes,
    mosquitto_config,
    write_mosquitto_files,
)
from covidet.store import Database, RejectedMessage, VitalSignRecord, queries
from covidet.store.queries import DeviceCredentials
from tests.ingest.test_mqtt import (
    INGEST_PASSWORD,
    INGEST_USER,
    NOW,
    count_rows,
    covidet_env,
    reading,
    rejected_rows,
    wait_until,
)
from tests.servers import MosquittoHandle, TlsFiles, find_binary, make_tls_files, start_mosquitto

TOPIC = "covidet/devices/+/vitals"


def mosquitto_tool(name: str) -> str:
    return find_binary(name, "mosquitto-clients", (f"/usr/bin/{name}",))


def write_generated_files(db: Database, directory: Path) -> None:
    """covidet's password file and ACL from the device table, as ``covidet mqtt-broker-files`` writes
    them (nothing added for the tests)."""
    with db.session() as session:
        write_mosquitto_files(
            session, directory, ingest_username=INGEST_USER, ingest_password=INGEST_PASSWORD
        )


@dataclass
class GeneratedBroker:
    """The one private Mosquitto of the tests (:func:`tests.servers.start_mosquitto`, which runs
    covidet's generated configuration) with a plain listener ``port`` and a TLS listener ``tls_port``,
    and the database its password file and ACL are written from."""

    db: Database
    mosquitto: MosquittoHandle

    @property
    def port(self) -> int:
        return self.mosquitto.port

    @property
    def tls_port(self) -> int:
        assert self.mosquitto.tls_port is not None
        return self.mosquitto.tls_port

    @property
    def tls(self) -> TlsFiles:
        assert self.mosquitto.tls is not None
        return self.mosquitto.tls

    def log(self) -> str:
        return self.mosquitto.log()

    def add_sensor(self, name: str) -> DeviceCredentials:
        """Register a sensor, rewrite the files, make the broker reread them (SIGHUP)."""
        with self.db.session(write=True) as session:
            credentials = queries.create_device(session, name, "sensor")
        write_generated_files(self.db, self.mosquitto.files_dir)
        self.mosquitto.reload()
        return credentials

    def count(self, model: type[VitalSignRecord]) -> int:
        return count_rows(self.db, model)

    def rejected(self) -> list[RejectedMessage]:
        return rejected_rows(self.db)


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Callable[..., GeneratedBroker]]:
    """``generated(max_payload_bytes=...)``: a SQLite database and a broker on the generated
    configuration, with a TLS listener (a throw-away CA), both stopped after the test."""
    started: list[GeneratedBroker] = []

    def start(*, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> GeneratedBroker:
        db = Database(f"sqlite:///{tmp_path / f'covidet-{len(started)}.db'}")
        try:
            mosquitto = start_mosquitto(
                lambda directory: write_generated_files(db, directory),
                tls=True,
                max_payload_bytes=max_payload_bytes,
                # The broker says "Dropped too large PUBLISH" at debug level only.
                extra_config="log_type debug",
            )
        except BaseException:
            db.dispose()
            raise
        started.append(GeneratedBroker(db, mosquitto))
        return started[-1]

    yield start
    for broker in started:
        broker.mosquitto.stop()
        broker.db.dispose()


@pytest.fixture
def subscribers() -> Iterator[Callable[..., VitalsSubscriber]]:
    """``start(broker, wait=True, **options)``: a covidet subscriber as the ingest user, stopped after."""
    running: list[VitalsSubscriber] = []

    def start(broker: GeneratedBroker, *, wait: bool = True, **options: Any) -> VitalsSubscriber:
        options = {
            "port": broker.port,
            "username": INGEST_USER,
            "password": INGEST_PASSWORD,
            "reconnect_delay_s": (1, 2),
            **options,
        }
        subscriber = VitalsSubscriber(broker.db, **options)
        running.append(subscriber)
        subscriber.start()
        if wait:
            assert subscriber.wait_ready(15), "subscriber did not connect and subscribe"
        return subscriber

    yield start
    for subscriber in running:
        subscriber.stop(timeout=5)


def pub(
    port: int, sensor: DeviceCredentials, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Debian's mosquitto_pub as ``sensor``, QoS 1, to its own topic (MQTT v3.1.1); ``stdin`` for ``-l``."""
    return subprocess.run(
        [mosquitto_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port), "-u", sensor.mqtt_username,
         "-P", sensor.mqtt_password, "-q", "1", "-t", sensor.vitals_topic, *args],
        input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def sub_as_subscriber_id(
    port: int, sensor: DeviceCredentials, *args: str
) -> subprocess.CompletedProcess[str]:
    """The attack of issue 19 item 8: mosquitto_sub with the sensor's login and the subscriber's client id
    (``covidet-ingest``), for two seconds."""
    return subprocess.run(
        [mosquitto_tool("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port), "-u", sensor.mqtt_username,
         "-P", sensor.mqtt_password, "-i", INGEST_USER, "-q", "1", "-t", TOPIC, "-v", "-W", "2", *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


# ------------------------------------------------------------------------------- the generated files


def test_the_generated_configuration_binds_client_ids_on_every_listener_and_limits_sizes(
    tmp_path: Path,
) -> None:
    """mosquitto.conf.example (from `covidet mqtt-broker-files`) carries the hardening, with the limit
    of COVIDET_MQTT_MAX_PAYLOAD_BYTES; use_username_as_clientid follows each listener line, because
    Mosquitto 2.0 ignores it for the listeners below it when it comes first."""
    from typer.testing import CliRunner

    from covidet.cli import app

    env = covidet_env(tmp_path, f"sqlite:///{tmp_path / 'covidet.db'}", 1883)
    result = CliRunner().invoke(
        app, ["mqtt-broker-files"], env=env | {"COVIDET_MQTT_MAX_PAYLOAD_BYTES": "32768"}
    )
    assert result.exit_code == 0, result.output
    example = Path(json.loads(result.stdout)["example_config"]).read_text()
    written = json.loads(result.stdout)
    assert example == mosquitto_config(written["password_file"], written["acl_file"], max_payload_bytes=32768)
    lines = [line for line in example.splitlines() if line and not line.startswith("#")]
    assert "message_size_limit 32768" in lines and f"max_packet_size {max_packet_bytes(32768)}" in lines
    assert "allow_anonymous false" in lines
    listeners = [index for index, line in enumerate(lines) if line.startswith("listener ")]
    assert [lines[index] for index in listeners] == ["listener 1883 127.0.0.1", "listener 8883"]
    assert all(lines[index + 1] == "use_username_as_clientid true" for index in listeners)
    assert lines.count("use_username_as_clientid true") == len(listeners)


# ------------------------------------------------------------------------------- item 8: client ids


def test_a_sensor_with_the_subscribers_client_id_cannot_wipe_its_queued_readings(
    generated: Callable[..., GeneratedBroker], subscribers: Callable[..., VitalsSubscriber]
) -> None:
    """50 readings the broker acknowledged while covidet was down survive a sensor connecting as
    `mosquitto_sub -i covidet-ingest` (clean session, then persistent): all 50 are stored afterwards."""
    broker = generated()
    sensor = broker.add_sensor("bed-1-oximeter")
    subscribers(broker).stop()  # the broker keeps the subscriber's session and queues for it
    lines = "\n".join(
        reading("P-8", NOW - timedelta(seconds=i), spo2=90 + i % 10).decode() for i in range(50)
    )
    result = pub(broker.port, sensor, "-l", stdin=lines + "\n")  # one message per line
    assert result.returncode == 0, result.stderr  # every message acknowledged by the broker

    for extra in ([], ["-c"]):  # a clean session (wipes a session it takes over), then a persistent one
        attack = sub_as_subscriber_id(broker.port, sensor, *extra)
        assert attack.stdout == ""  # it reads nothing: the ACL lets a sensor write its own topic only

    subscriber = subscribers(broker)
    wait_until(lambda: broker.count(VitalSignRecord) == 50, message="the 50 queued readings")
    assert subscriber.stats().stored == 50 and broker.rejected() == []
    # The broker gave the intruder its user name as client id, so it never touched covidet-ingest's.
    assert f"as {sensor.mqtt_username} (" in broker.log()


def test_a_sensor_with_the_subscribers_client_id_cannot_disconnect_the_running_subscriber(
    generated: Callable[..., GeneratedBroker],
    subscribers: Callable[..., VitalsSubscriber],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = generated()
    sensor = broker.add_sensor("bed-2-monitor")
    subscriber = subscribers(broker)
    with caplog.at_level(logging.INFO, logger="covidet"):
        for i in range(3):
            sub_as_subscriber_id(broker.port, sensor)
            assert (
                pub(broker.port, sensor, "-m", reading("P-9", NOW - timedelta(seconds=i)).decode()).returncode
                == 0
            )
        wait_until(lambda: broker.count(VitalSignRecord) == 3, message="3 readings")
    assert subscriber.wait_ready(0) and subscriber.stats().stored == 3
    lost = [
        r.getMessage() for r in caplog.records if "lost" in r.getMessage() or "client id" in r.getMessage()
    ]
    assert lost == []
    assert "already connected, closing old connection" not in broker.log()
    # Exactly one connection of the subscriber's user: it was never kicked off and reconnected.
    assert broker.log().count(f"as {INGEST_USER} (") == 1


# ------------------------------------------------------------------------------- item 9: sizes


def test_the_broker_drops_payloads_over_the_limit_and_the_subscriber_carries_on(
    generated: Callable[..., GeneratedBroker], subscribers: Callable[..., VitalsSubscriber], tmp_path: Path
) -> None:
    broker = generated()  # the default limit: 16 KiB
    sensor = broker.add_sensor("bed-3-monitor")
    subscriber = subscribers(broker)
    over = tmp_path / "over.json"
    over.write_bytes(b'{"patient_id": "P-1", "pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}')
    huge = tmp_path / "huge.bin"
    huge.write_bytes(b"x" * (8 * 1024 * 1024))

    # Just over: message_size_limit drops it and completes the QoS-1 flow (mosquitto_pub, MQTT v3.1.1,
    # sees success; Mosquitto 2.0.11 answers a v5 client with PUBACK reason 0x95, see docs/mqtt.md).
    assert pub(broker.port, sensor, "-f", str(over)).returncode == 0
    assert "Dropped too large PUBLISH" in broker.log()
    # Far over (8 MiB): max_packet_size, the broker cuts the connection before it buffers the packet.
    result = pub(broker.port, sensor, "-f", str(huge))
    assert result.returncode != 0
    wait_until(lambda: "disconnected due to oversize packet" in broker.log(), 10, "the broker's log line")

    assert pub(broker.port, sensor, "-m", reading("P-1", spo2=95).decode()).returncode == 0
    wait_until(lambda: broker.count(VitalSignRecord) == 1, message="the normal reading")
    stats = subscriber.stats()
    assert (stats.received, stats.stored, stats.rejected, stats.connected) == (1, 1, 0, True)
    assert broker.rejected() == []


def test_the_subscriber_refuses_oversize_payloads_on_arrival_and_never_gets_far_larger_ones(
    generated: Callable[..., GeneratedBroker],
    subscribers: Callable[..., VitalsSubscriber],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """A broker with a larger limit than the subscriber's (a misconfiguration, or an older config): a
    payload over the subscriber's limit is a rejected_messages row with its first KiB; one beyond the
    Maximum Packet Size the subscriber announces is discarded by the broker; the stream carries on."""
    broker = generated(max_payload_bytes=4 * 1024 * 1024)
    sensor = broker.add_sensor("bed-4-monitor")
    subscriber = subscribers(broker, max_payload_bytes=16 * 1024)
    over = tmp_path / "over.json"
    over.write_bytes(b'{"patient_id": "P-2", "pad": "' + b"x" * (20 * 1024) + b'"}')
    far = tmp_path / "far.bin"
    far.write_bytes(b"y" * (1024 * 1024))  # over 16 KiB + 64 KiB of headroom

    with caplog.at_level(logging.WARNING, logger="covidet"):
        assert pub(broker.port, sensor, "-f", str(over)).returncode == 0
        wait_until(lambda: broker.rejected(), message="the rejected_messages row")
        assert pub(broker.port, sensor, "-f", str(far)).returncode == 0
        assert pub(broker.port, sensor, "-m", reading("P-2", spo2=93).decode()).returncode == 0
        wait_until(lambda: broker.count(VitalSignRecord) == 1, message="the normal reading")
    [row] = broker.rejected()
    size = over.stat().st_size
    assert row.reason == f"payload of {size} bytes exceeds 16384 bytes"
    assert row.source == sensor.vitals_topic and row.payload == over.read_bytes()[:1024]
    assert any(f"on arrival: payload of {size} bytes" in r.getMessage() for r in caplog.records)
    stats = subscriber.stats()
    assert (stats.received, stats.stored, stats.rejected, stats.connected) == (2, 1, 1, True)


# ------------------------------------------------------------------------------- item 9: TLS errors


def test_a_wrong_ca_is_reported_as_a_certificate_failure(
    generated: Callable[..., GeneratedBroker],
    subscribers: Callable[..., VitalsSubscriber],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    broker = generated()
    sensor = broker.add_sensor("bed-5-tls")
    wrong = make_tls_files(tmp_path / "other-ca")  # a CA that did not sign the broker's certificate
    with caplog.at_level(logging.WARNING, logger="covidet"):
        subscriber = subscribers(broker, port=broker.tls_port, tls_ca=wrong.ca_cert, wait=False)
        record = wait_until(
            lambda: next(
                (r for r in caplog.records if "TLS certificate verification failed" in r.getMessage()), None
            ),
            message="the certificate log line",
        )
    message = record.getMessage()
    assert record.levelno == logging.ERROR
    assert f"127.0.0.1:{broker.tls_port}" in message and "certificate verify failed" in message
    assert "COVIDET_MQTT_TLS_CA" in message
    assert not any("cannot reach" in r.getMessage() for r in caplog.records)
    assert not subscriber.wait_ready(0)

    # The generated TLS listener itself works with the right CA, for the subscriber and a sensor.
    subscriber = subscribers(broker, port=broker.tls_port, tls_ca=broker.tls.ca_cert)
    result = pub(broker.tls_port, sensor, "--cafile", str(broker.tls.ca_cert), "-m", reading("P-5").decode())
    assert result.returncode == 0, result.stderr
    wait_until(lambda: broker.count(VitalSignRecord) == 1, message="the TLS reading")

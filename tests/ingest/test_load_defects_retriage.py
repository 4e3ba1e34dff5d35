"""Load-test finding 3 (docs/load.md): re-triage after new vitals ran on the MQTT writer thread.

``covidet serve``'s services (:func:`covidet.app.runner.start_services`) with a real private Mosquitto and
real publishers (``mosquitto_pub -l``): while a re-triage is stuck (the analyzer's re-triage replaced
by one that blocks until released: the slow callable under test, nothing else is replaced), readings
keep being stored and acknowledged; the patient reported by every batch meanwhile is re-triaged once
more, not once per batch.
"""

from __future__ import annotations

import subprocess
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from covidet.app.runner import start_services
from covidet.config import Settings
from covidet.ingest.mqtt import VitalsSubscriber
from covidet.store import Database, VitalSignRecord, queries
from covidet.worker.analysis import Analyzer
from tests.ingest.test_mqtt import INGEST_PASSWORD, INGEST_USER, NOW, reading, wait_until, write_broker_files
from tests.servers import find_binary, start_mosquitto


def publish_lines(port: int, credentials: tuple[str, str], topic: str, payloads: list[bytes]) -> None:
    """Every payload as one QoS-1 message, with Debian's mosquitto_pub reading lines from stdin."""
    binary = find_binary("mosquitto_pub", "mosquitto-clients", ("/usr/bin/mosquitto_pub",))
    result = subprocess.run(
        [binary, "-h", "127.0.0.1", "-p", str(port), "-u", credentials[0], "-P", credentials[1],
         "-q", "1", "-t", topic, "-l"],
        input=b"\n".join(payloads) + b"\n",
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def stored(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(VitalSignRecord)) or 0)


def test_readings_are_stored_and_acknowledged_while_a_retriage_is_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'covidet.db'}"
    db = Database(url)
    with db.session(write=True) as session:
        sensor = queries.create_device(session, "bed-7", "sensor")
    broker = start_mosquitto(lambda directory: write_broker_files(db, directory))
    credentials = (sensor.mqtt_username, sensor.mqtt_password)
    assert credentials[0] and credentials[1]

    calls: list[int] = []
    started, release = threading.Event(), threading.Event()

    def slow_retriage(self: Analyzer, patient_id: int, **_: Any) -> int:
        calls.append(patient_id)
        started.set()
        release.wait(120)  # the first one is stuck until the test releases it
        return 0

    monkeypatch.setattr(Analyzer, "retriage_patient", slow_retriage)
    settings = Settings(
        home=tmp_path / "home",
        database_url=url,
        mqtt_broker_host="127.0.0.1",
        mqtt_broker_port=broker.port,
        mqtt_username=INGEST_USER,
        mqtt_password=INGEST_PASSWORD,
    )
    services = start_services(settings, mqtt=True)
    try:
        assert services.mqtt.wait_ready(15)
        topic = sensor.vitals_topic
        publish_lines(broker.port, credentials, topic, [reading("P-1", NOW - timedelta(seconds=100))])
        assert started.wait(60), "the first reading was stored and its patient handed to re-triage"
        # The re-triage is stuck. Readings go on being stored, in batches, each reporting P-1 again.
        for round_ in range(3):
            payloads = [
                reading("P-1", NOW - timedelta(seconds=90 - 10 * round_, milliseconds=i)) for i in range(20)
            ]
            publish_lines(broker.port, credentials, topic, payloads)
            wait_until(
                lambda n=1 + 20 * (round_ + 1): stored(db) == n,
                60,
                f"{1 + 20 * (round_ + 1)} readings stored",
            )
        assert services.mqtt.stats().batches >= 4
        assert calls == [calls[0]], "one re-triage running, the others waiting"
        release.set()
        # Every batch reported the same patient while its re-triage ran: one more pass covers them.
        wait_until(lambda: len(calls) == 2, 60, "the coalesced re-triage")
        services.stop(grace=30)
        assert calls == [calls[0]] * 2
        assert services.retriage.coalesced >= 2
    finally:
        release.set()
        services.stop(grace=10)

    # Every reading was acknowledged to the broker: a new subscriber of covidet's session gets none
    # of them again, only the reading published after.
    subscriber = VitalsSubscriber(db, port=broker.port, username=INGEST_USER, password=INGEST_PASSWORD)
    subscriber.start()
    try:
        assert subscriber.wait_ready(15)
        publish_lines(broker.port, credentials, sensor.vitals_topic, [reading("P-1", NOW)])
        wait_until(lambda: stored(db) == 62, 60, "the reading published after the restart")
        assert subscriber.stats().duplicates == 0
        assert subscriber.stats().received == 1
    finally:
        subscriber.stop(timeout=5)
        broker.stop()
        db.dispose()

"""Simulated bedside sensors: plausible vital-sign series published over MQTT (paho-mqtt 2, QoS 1).

Each message goes to ``covidet/devices/{device_id}/vitals`` as JSON::

    {"patient_id": "SIM-ieee8023-37", "timestamp": "2024-05-01T10:00:00+00:00",
     "spo2": 91, "temperature": 38.6, "heart_rate": 104, "respiratory_rate": 26, "systolic_bp": 118}

Units: SpO2 in %, temperature in °C, heart and respiratory rate per minute, systolic blood pressure
in mmHg; the timestamp is ISO 8601 UTC with its offset. Values stay inside the ranges covidet's
subscriber accepts (:data:`VITAL_RANGES`).

The physiology is a caricature, good enough to exercise triage: every patient has a baseline drawn
around normal values; a covid19 patient drifts over the series towards desaturation (SpO2 88-93 %),
fever, tachycardia and tachypnoea; a pneumonia patient part of the way; a normal patient (or one of
unknown label) stays normal. Noise is autocorrelated, as real monitor readings are. Everything is
drawn from a generator seeded by ``(seed, patient)``, so a series is reproducible.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.client import ConnectFlags
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from tqdm import tqdm

from covidet.simulate.records import VitalsJson, VitalsMessage

__all__ = [
    "VITAL_FIELDS",
    "VITAL_RANGES",
    "SensorSimulator",
    "SimulatedPatient",
    "VitalsMessage",
    "VitalsReport",
    "vital_messages",
    "vital_series",
    "vitals_topic",
]

logger = logging.getLogger(__name__)

#: Measurement fields of a vitals message, besides ``patient_id`` and ``timestamp``.
VITAL_FIELDS = ("spo2", "temperature", "heart_rate", "respiratory_rate", "systolic_bp")
#: Inclusive ranges covidet's MQTT subscriber accepts (%, °C, /min, /min, mmHg).
VITAL_RANGES: dict[str, tuple[float, float]] = {
    "spo2": (50.0, 100.0),
    "temperature": (30.0, 45.0),
    "heart_rate": (20.0, 300.0),
    "respiratory_rate": (2.0, 80.0),
    "systolic_bp": (40.0, 300.0),
}
#: Standard deviation of the per-reading noise of each field (before autocorrelation).
_NOISE = {"spo2": 0.45, "temperature": 0.08, "heart_rate": 2.5, "respiratory_rate": 0.8, "systolic_bp": 4.0}
_AUTOCORRELATION = 0.6  # AR(1) coefficient: consecutive monitor readings are not independent


def vitals_topic(device_id: int) -> str:
    """The MQTT topic of a sensor device (the only one its broker ACL lets it publish to)."""
    return f"covidet/devices/{device_id}/vitals"


@dataclass(frozen=True, slots=True)
class SimulatedPatient:
    """A patient at a bedside: ``key`` is the id sent as ``patient_id``; ``label`` drives the
    physiology (covid19 | pneumonia | normal | None for unknown, treated as normal)."""

    key: str
    label: str | None


def _baseline_and_target(label: str | None, rng: random.Random) -> tuple[dict[str, float], dict[str, float]]:
    base = {
        "spo2": rng.uniform(96.5, 99.0),
        "temperature": rng.uniform(36.4, 37.1),
        "heart_rate": rng.uniform(62.0, 84.0),
        "respiratory_rate": rng.uniform(12.0, 17.0),
        "systolic_bp": rng.uniform(110.0, 132.0),
    }
    if label == "covid19":
        target = {
            "spo2": rng.uniform(88.0, 93.0),
            "temperature": rng.uniform(38.0, 39.4),
            "heart_rate": base["heart_rate"] + rng.uniform(18.0, 32.0),
            "respiratory_rate": rng.uniform(23.0, 30.0),
            "systolic_bp": base["systolic_bp"] - rng.uniform(0.0, 10.0),
        }
    elif label == "pneumonia":
        target = {
            "spo2": rng.uniform(92.0, 95.0),
            "temperature": rng.uniform(37.8, 39.0),
            "heart_rate": base["heart_rate"] + rng.uniform(10.0, 22.0),
            "respiratory_rate": rng.uniform(20.0, 25.0),
            "systolic_bp": base["systolic_bp"],
        }
    else:
        target = dict(base)
    return base, target


def vital_series(
    patient: SimulatedPatient,
    *,
    count: int,
    seed: int = 0,
    end: datetime | None = None,
    interval_s: float = 60.0,
) -> list[VitalsMessage]:
    """``count`` vitals messages of one patient, oldest first, the last one measured at ``end``.

    ``end`` (timezone-aware; default now, to the second) and ``interval_s`` (seconds between
    readings) set the timestamps; the values depend only on ``seed`` and the patient.
    """
    if count < 1:
        return []
    end = (end or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    rng = random.Random(f"covidet-vitals/{seed}/{patient.key}")
    base, target = _baseline_and_target(patient.label, rng)
    noise = dict.fromkeys(VITAL_FIELDS, 0.0)
    series: list[VitalsMessage] = []
    for index in range(count):
        fraction = index / (count - 1) if count > 1 else 1.0
        progress = fraction * fraction * (3 - 2 * fraction)  # smoothstep: slow onset, then plateau
        value: dict[str, float] = {}
        for name in VITAL_FIELDS:
            noise[name] = _AUTOCORRELATION * noise[name] + rng.gauss(0.0, _NOISE[name])
            low, high = VITAL_RANGES[name]
            value[name] = min(
                max(base[name] + (target[name] - base[name]) * progress + noise[name], low), high
            )
        # As monitors display them: temperature to 0.1 °C, the others as whole numbers.
        series.append(
            VitalsMessage(
                patient_id=patient.key,
                timestamp=(end - timedelta(seconds=interval_s * (count - 1 - index))).isoformat(),
                spo2=round(value["spo2"]),
                temperature=round(value["temperature"], 1),
                heart_rate=round(value["heart_rate"]),
                respiratory_rate=round(value["respiratory_rate"]),
                systolic_bp=round(value["systolic_bp"]),
            )
        )
    return series


def vital_messages(
    patients: Sequence[SimulatedPatient],
    *,
    count: int,
    seed: int = 0,
    end: datetime | None = None,
    interval_s: float = 60.0,
) -> list[VitalsMessage]:
    """The series of all ``patients`` interleaved in time order, as a ward of monitors sends them."""
    end = (end or datetime.now(UTC)).replace(microsecond=0)
    series = [vital_series(p, count=count, seed=seed, end=end, interval_s=interval_s) for p in patients]
    return [messages[index] for index in range(count) for messages in series]


@dataclass
class VitalsReport:
    """What the sensors published: ``acknowledged`` messages got their QoS-1 PUBACK from the broker;
    ``failed`` did not (connection refused, broker gone, timeout). ``errors`` says why."""

    topic: str
    patients: int = 0
    published: int = 0
    acknowledged: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> VitalsJson:
        return {
            "topic": self.topic,
            "patients": self.patients,
            "published": self.published,
            "acknowledged": self.acknowledged,
            "failed": self.failed,
            "errors": self.errors,
        }


class SensorSimulator:
    """Publishes vitals messages for sensor device ``device_id`` to an MQTT broker (QoS 1).

    ``username``/``password`` are the device's MQTT credentials (``covidet devices add NAME --kind
    sensor``); ``tls_ca`` a CA file to connect over TLS. ``timeout`` (s) bounds the connection and
    the wait for the last acknowledgements.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        device_id: int,
        username: str | None = None,
        password: str | None = None,
        tls_ca: Path | None = None,
        client_id: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.host = host
        self.port = port
        self.device_id = device_id
        self.topic = vitals_topic(device_id)
        self.username = username
        self.password = password
        self.tls_ca = tls_ca
        # A fresh id per run: a fixed one would make the broker drop a simulator already running.
        self.client_id = client_id or f"covidet-sim-{device_id}-{secrets.token_hex(4)}"
        self.timeout = timeout

    def publish(
        self,
        messages: Sequence[VitalsMessage],
        *,
        rate: float | None = None,
        progress: bool = False,
        bar_position: int = 0,
    ) -> VitalsReport:
        """Publish ``messages`` in order, at most ``rate`` per second (``None``: as fast as possible),
        and wait for their acknowledgements. Never raises for broker or network errors: they are in
        the report."""
        report = VitalsReport(topic=self.topic, patients=len({m["patient_id"] for m in messages}))
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        if self.username:
            client.username_pw_set(self.username, self.password)
        client.max_inflight_messages_set(100)
        connected = threading.Event()
        connack: list[ReasonCode] = []
        acked: set[int] = set()
        changed = threading.Condition()

        def on_connect(
            _client: mqtt.Client,
            _userdata: object,
            _flags: ConnectFlags,
            reason_code: ReasonCode,
            _properties: Properties | None,
        ) -> None:
            connack.append(reason_code)
            connected.set()

        def on_publish(
            _client: mqtt.Client,
            _userdata: object,
            mid: int,
            _reason_code: ReasonCode,
            _properties: Properties | None,
        ) -> None:
            with changed:
                acked.add(mid)
                changed.notify_all()

        client.on_connect = on_connect
        client.on_publish = on_publish
        try:
            if self.tls_ca:
                client.tls_set(ca_certs=str(self.tls_ca))  # an unreadable CA file fails here
            client.connect(self.host, self.port, keepalive=30)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            report.errors.append(f"cannot connect to the MQTT broker {self.host}:{self.port}: {exc}")
            report.failed = len(messages)
            logger.warning("%s", report.errors[-1])
            return report
        client.loop_start()
        mids: list[int] = []
        bar = tqdm(
            total=len(messages),
            desc="vitals",
            unit="msg",
            file=sys.stderr,
            disable=not progress,
            position=bar_position,
        )
        try:
            if not connected.wait(self.timeout):
                report.errors.append(f"no answer (CONNACK) from the MQTT broker within {self.timeout} s")
            elif connack[0].is_failure:
                report.errors.append(f"the MQTT broker refused the connection: {connack[0]}")
            else:
                start = time.monotonic()
                for index, message in enumerate(messages):
                    if rate:
                        delay = start + index / rate - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    # Queued by paho even while a dropped connection is re-established.
                    info = client.publish(self.topic, json.dumps(message), qos=1)
                    mids.append(info.mid)
                    report.published += 1
                    bar.update(1)
                deadline = time.monotonic() + self.timeout
                with changed:
                    while not acked.issuperset(mids) and time.monotonic() < deadline:
                        changed.wait(max(0.0, deadline - time.monotonic()))
        finally:
            bar.close()
            client.disconnect()
            client.loop_stop()
        report.acknowledged = len(acked.intersection(mids))
        report.failed = len(messages) - report.acknowledged
        if report.published and report.failed:
            report.errors.append(f"{report.failed} message(s) not acknowledged within {self.timeout} s")
        for error in report.errors:
            logger.warning("%s", error)
        logger.info(
            "sensors published %d vitals message(s) to %s: %d acknowledged",
            report.published,
            self.topic,
            report.acknowledged,
        )
        return report

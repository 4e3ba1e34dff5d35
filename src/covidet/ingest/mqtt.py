"""Vital signs over MQTT: the payload schema, the durable QoS-1 subscriber and Mosquitto's files.

Bedside sensors publish one JSON object per set of measurements to ``covidet/devices/<device id>/vitals``
(``<device id>`` is :attr:`covidet.store.models.Device.id`), with QoS 1. :class:`VitalsSubscriber`
receives them through the broker (Mosquitto), validates them against :class:`VitalsPayload`, stores
them in batches and only then acknowledges them (PUBACK), so a message the broker handed over is either
committed to the database or redelivered after a crash or reconnect. Redeliveries are stored once: the
database keeps one row per (device, patient, measured_at).

Invalid input is never dropped silently: it goes to ``rejected_messages`` with its reason, is logged
and is acknowledged (redelivering it would not make it valid).

:func:`write_mosquitto_files` writes the broker's password file and ACL from the device table, so each
sensor may publish to its own topic only and the covidet subscriber may only read. See ``docs/mqtt.md``.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import queue
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from covidet.domain import VitalSign
from covidet.store import queries
from covidet.store.db import Database
from covidet.store.models import Device, DeviceKind, utcnow

__all__ = [
    "EARLIEST_TIMESTAMP",
    "MAX_CLOCK_SKEW",
    "MAX_PAYLOAD_BYTES",
    "TOPIC_FILTER",
    "VITAL_LIMITS",
    "IngestStats",
    "MosquittoFiles",
    "VitalsPayload",
    "VitalsRejected",
    "VitalsSubscriber",
    "device_id_from_topic",
    "parse_vitals",
    "write_mosquitto_files",
]

logger = logging.getLogger(__name__)

#: The subscription of the covidet subscriber: every device's vitals topic.
TOPIC_FILTER = "covidet/devices/+/vitals"
_TOPIC_RE = re.compile(r"covidet/devices/([1-9][0-9]{0,17})/vitals")

#: Largest accepted payload, bytes. A reading is ~200 bytes; the bound keeps a rogue publisher from
#: making the validator allocate megabytes.
MAX_PAYLOAD_BYTES = 16 * 1024
#: How far in the future a reading's timestamp may lie (device clocks drift; later ones are refused).
MAX_CLOCK_SKEW = timedelta(minutes=5)
#: Readings stamped earlier are refused: a sensor whose clock was never set reports 1970.
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)

#: Hard physiological limits per payload field: (minimum, maximum, unit). Values outside are refused as
#: sensor faults; they are wide on purpose, so that no real, if critical, reading is refused.
VITAL_LIMITS: dict[str, tuple[float, float, str]] = {
    "spo2": (50.0, 100.0, "%"),
    "temperature": (30.0, 45.0, "°C"),
    "heart_rate": (20.0, 300.0, "/min"),
    "respiratory_rate": (2.0, 80.0, "/min"),
    "systolic_bp": (40.0, 300.0, "mmHg"),
}

# Payload field -> VitalSignRecord / VitalSign attribute.
_COLUMNS = {
    "spo2": "spo2_percent",
    "temperature": "temperature_c",
    "heart_rate": "heart_rate_per_min",
    "respiratory_rate": "respiratory_rate_per_min",
    "systolic_bp": "systolic_bp_mmhg",
}


def _vital(name: str, description: str) -> Any:
    low, high, unit = VITAL_LIMITS[name]
    # strict: a JSON number only ("97" or true are refused); NaN and infinities are refused.
    return Annotated[
        float | None,
        Field(strict=True, ge=low, le=high, allow_inf_nan=False, description=f"{description}, {unit}"),
    ]


_Spo2 = _vital("spo2", "peripheral oxygen saturation")
_Temperature = _vital("temperature", "body temperature")
_HeartRate = _vital("heart_rate", "heart rate")
_RespiratoryRate = _vital("respiratory_rate", "respiratory rate")
_SystolicBp = _vital("systolic_bp", "systolic blood pressure")


class VitalsPayload(BaseModel):
    """The JSON object a sensor publishes. Unknown fields are refused (a misspelt ``"SpO2"`` would
    otherwise be dropped without anyone noticing); at least one measurement is required.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    patient_id: Annotated[
        str, Field(strict=True, min_length=1, max_length=64, description="patient identifier (as in DICOM)")
    ]
    timestamp: Annotated[
        datetime,
        Field(description="time of measurement, ISO 8601 with a UTC offset, e.g. 2024-05-01T08:30:00Z"),
    ]
    spo2: _Spo2 = None
    temperature: _Temperature = None
    heart_rate: _HeartRate = None
    respiratory_rate: _RespiratoryRate = None
    systolic_bp: _SystolicBp = None

    @field_validator("patient_id")
    @classmethod
    def _patient_id_printable(cls, value: str) -> str:
        value = value.strip()
        if not value or not value.isprintable():
            raise ValueError("must be printable text, not blank")
        return value

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp_is_text(cls, value: Any) -> Any:
        # pydantic would also take a number as Unix time; the contract is ISO 8601 text only.
        if not isinstance(value, str):
            raise ValueError("must be an ISO 8601 string")
        return value

    @field_validator("timestamp")
    @classmethod
    def _timestamp_is_aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("has no UTC offset (add 'Z' or '+hh:mm')")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _some_measurement(self) -> VitalsPayload:
        if all(getattr(self, name) is None for name in VITAL_LIMITS):
            raise ValueError(f"no measurement: give at least one of {', '.join(VITAL_LIMITS)}")
        return self

    def to_vital_sign(self) -> VitalSign:
        """The payload as the domain type (UTC time, units in the attribute names)."""
        return VitalSign(
            patient_id=self.patient_id,
            measured_at=self.timestamp,
            **{column: getattr(self, name) for name, column in _COLUMNS.items()},
        )


class VitalsRejected(ValueError):
    """A message that cannot be stored; ``reason`` is one line for ``rejected_messages`` and the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def device_id_from_topic(topic: str) -> int:
    """The device id in ``covidet/devices/<id>/vitals``. Raises :class:`VitalsRejected` otherwise."""
    match = _TOPIC_RE.fullmatch(topic)
    if match is None:
        raise VitalsRejected(f"topic {topic!r} is not covidet/devices/<device id>/vitals")
    return int(match.group(1))


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if not location:  # a rule over the whole object
            parts.append(message)
        elif item["type"] in {"missing", "extra_forbidden"}:
            parts.append(f"{location}: {message}")
        else:
            parts.append(f"{location}: {message} (got {item['input']!r})")
    return "; ".join(parts)


def parse_vitals(payload: bytes, *, now: datetime | None = None) -> VitalSign:
    """Validate a published payload (UTF-8 JSON, :class:`VitalsPayload`) into a :class:`VitalSign`.

    ``now`` (default: the current time) bounds the timestamp: at most :data:`MAX_CLOCK_SKEW` later.

    Raises:
        VitalsRejected: oversized or malformed JSON, schema or range errors, an implausible timestamp;
            the reason names every offending field with the value received.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise VitalsRejected(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES} bytes")
    try:
        vitals = VitalsPayload.model_validate_json(payload)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise VitalsRejected(f"malformed JSON: {first['msg'].removeprefix('Invalid JSON: ')}") from None
        if first["type"] == "model_type":
            raise VitalsRejected("payload is not a JSON object") from None
        raise VitalsRejected(_describe(error)) from None
    now = now or utcnow()
    if vitals.timestamp > now + MAX_CLOCK_SKEW:
        raise VitalsRejected(
            f"timestamp: {vitals.timestamp.isoformat()} is more than {MAX_CLOCK_SKEW.total_seconds():.0f} s "
            f"after the time of receipt {now.isoformat()}"
        )
    if vitals.timestamp < EARLIEST_TIMESTAMP:
        raise VitalsRejected(
            f"timestamp: {vitals.timestamp.isoformat()} is before {EARLIEST_TIMESTAMP.date()} "
            "(sensor clock not set?)"
        )
    return vitals.to_vital_sign()


# ------------------------------------------------------------------------------------- broker files


@dataclass(frozen=True, slots=True)
class MosquittoFiles:
    """Where :func:`write_mosquitto_files` wrote the broker's files, and what they hold."""

    password_file: Path
    acl_file: Path
    example_config: Path
    devices: int
    ingest_user: str | None


def _mosquitto_ids() -> tuple[int | None, set[int]]:
    """(uid, gids) of the ``mosquitto`` user, or (None, gids of a ``mosquitto`` group if any)."""
    gids: set[int] = set()
    with contextlib.suppress(KeyError):
        gids.add(grp.getgrnam("mosquitto").gr_gid)
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        return None, gids
    gids.add(user.pw_gid)
    gids |= {group.gr_gid for group in grp.getgrall() if "mosquitto" in group.gr_mem}
    return user.pw_uid, gids


def _blocking_ancestor(directory: Path) -> Path | None:
    """The first folder on the way to ``directory`` that the ``mosquitto`` user cannot enter, if any."""
    uid, gids = _mosquitto_ids()
    if uid is None:
        return None  # no mosquitto user on this machine: the broker runs as someone we cannot check
    for folder in [directory, *directory.parents]:
        info = folder.stat()
        if info.st_uid == uid:
            allowed = info.st_mode & 0o100
        elif info.st_gid in gids:
            allowed = info.st_mode & 0o010
        else:
            allowed = info.st_mode & 0o001
        if not allowed:
            return folder
    return None


def _atomic_write(path: Path, text: str, *, group: int | None) -> None:
    """Replace ``path`` with ``text`` atomically (temp file, fsync, rename): the broker, which may reload
    at any moment (SIGHUP), reads either the old file or the new one, never half of one.

    Mode 0640 with group ``group`` when this process may give the file to that group (root, or a member
    of it), else 0644: Mosquitto reads the files after dropping root for the ``mosquitto`` user.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            mode = 0o644
            if group is not None:
                try:
                    os.fchown(handle.fileno(), -1, group)
                    mode = 0o640
                except PermissionError:
                    pass
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # the rename itself survives a power cut
    finally:
        os.close(directory_fd)


def _check_username(username: str) -> str:
    if not username or any(c.isspace() or c == ":" for c in username) or not username.isprintable():
        raise ValueError(f"MQTT user name {username!r} must be printable, without spaces or ':'")
    return username


_EXAMPLE_CONFIG = """\
# Mosquitto configuration for covidet, written by `covidet devices add` (example: review, then use it
# with `mosquitto -c THIS_FILE`, or copy the lines you need into /etc/mosquitto/conf.d/covidet.conf;
# Debian's /etc/mosquitto/mosquitto.conf already sets persistence, persistence_location and log_dest).
# After each `covidet devices add`, reload the broker so it rereads the two files below:
#   systemctl reload mosquitto        (or: kill -HUP <pid of mosquitto>)

per_listener_settings false
allow_anonymous false
password_file {password_file}
acl_file {acl_file}

# Keep the covidet subscriber's QoS-1 session (and its queued messages) on disk across restarts.
persistence true
persistence_location /var/lib/mosquitto/
# Seconds between saves of the in-memory state; a broker crash loses what arrived since the last save.
autosave_interval 60
# Mosquitto's default keeps 1000 queued QoS-1 messages per client and then drops new ones silently;
# give the subscriber room for a long outage (about 300 bytes a reading).
max_queued_messages 1000000

# Plain MQTT on loopback only: the covidet subscriber on this host.
listener 1883 127.0.0.1

# MQTT over TLS for the sensors on the ward network (set COVIDET_MQTT_TLS_CA on the subscriber side
# to use this listener from another host).
listener 8883
cafile /etc/mosquitto/certs/ca.crt
certfile /etc/mosquitto/certs/server.crt
keyfile /etc/mosquitto/certs/server.key
tls_version tlsv1.2
"""


def write_mosquitto_files(
    session: Session,
    directory: Path,
    *,
    ingest_username: str | None = None,
    ingest_password: str | None = None,
) -> MosquittoFiles:
    """Write Mosquitto's ``passwd`` and ``acl`` files and a ``mosquitto.conf.example`` into ``directory``.

    ``passwd`` has one line per active sensor device (its ``mqtt_username`` and stored ``$7$`` hash)
    plus the covidet subscriber's user when ``ingest_username`` and ``ingest_password`` are given (the
    password is hashed here). ``acl`` lets each device write only ``covidet/devices/<its id>/vitals``
    and the subscriber read only ``covidet/devices/+/vitals``. Every file is replaced atomically, mode
    0640 group ``mosquitto`` where possible, else 0644 (see ``docs/mqtt.md``). The broker rereads them
    on SIGHUP.

    Raises:
        ValueError: only one of ingest user name and password given, or a user name Mosquitto's file
            format cannot hold.
        OSError: the folder or a file cannot be written.
    """
    if (ingest_username is None) != (ingest_password is None):
        raise ValueError("the covidet MQTT user needs both a user name and a password (COVIDET_MQTT_*)")
    directory = Path(directory).expanduser().absolute()
    _, gids = _mosquitto_ids()
    group = min(gids) if gids else None
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        try:
            if group is None:
                raise PermissionError
            os.chown(directory, -1, group)
            directory.chmod(0o750)
        except PermissionError:
            directory.chmod(0o755)

    sensors = [
        device
        for device in queries.list_devices(session)
        if device.kind == DeviceKind.SENSOR.value
        and device.active
        and device.mqtt_username
        and device.mqtt_password_hash
    ]
    password_lines: list[str] = []
    acl_lines = [
        "# Written by covidet (write_mosquitto_files); changes here are overwritten.",
        "# No topic lines before the first 'user' line: anonymous clients get nothing.",
        "",
    ]
    if ingest_username is not None and ingest_password is not None:
        _check_username(ingest_username)
        password_lines.append(f"{ingest_username}:{queries.mosquitto_password_hash(ingest_password)}")
        acl_lines += [f"user {ingest_username}", f"topic read {TOPIC_FILTER}", ""]
    else:
        logger.warning(
            "no covidet MQTT user (COVIDET_MQTT_USERNAME / COVIDET_MQTT_PASSWORD): the broker files let "
            "devices publish but nobody subscribe"
        )
    for device in sensors:
        username = _check_username(str(device.mqtt_username))
        password_lines.append(f"{username}:{device.mqtt_password_hash}")
        acl_lines += [f"user {username}", f"topic write {queries.vitals_topic(device.id)}", ""]

    files = MosquittoFiles(
        password_file=directory / "passwd",
        acl_file=directory / "acl",
        example_config=directory / "mosquitto.conf.example",
        devices=len(sensors),
        ingest_user=ingest_username,
    )
    _atomic_write(files.password_file, "".join(line + "\n" for line in password_lines), group=group)
    _atomic_write(files.acl_file, "\n".join(acl_lines), group=group)
    _atomic_write(
        files.example_config,
        _EXAMPLE_CONFIG.format(password_file=files.password_file, acl_file=files.acl_file),
        group=group,
    )
    logger.info(
        "wrote Mosquitto's password file and ACL (%d sensor devices%s) to %s; reload the broker (SIGHUP)",
        files.devices,
        f", subscriber user {ingest_username!r}" if ingest_username else "",
        directory,
    )
    blocked = _blocking_ancestor(directory)
    if blocked is not None:
        logger.warning(
            "the mosquitto user cannot enter %s, so the broker cannot read these files: set "
            "COVIDET_MOSQUITTO_DIR to a folder it can reach, e.g. /etc/mosquitto/covidet",
            blocked,
        )
    return files


# ------------------------------------------------------------------------------------- subscriber


@dataclass(frozen=True, slots=True)
class IngestStats:
    """Counters of a :class:`VitalsSubscriber` since it started.

    ``received`` messages handed over by the broker; ``stored`` new vital-sign rows; ``duplicates``
    valid readings already stored (redeliveries); ``rejected`` rows written to ``rejected_messages``;
    ``batches`` committed transactions; ``last_commit_at`` wall-clock time (Unix seconds) of the last one.
    """

    received: int
    stored: int
    duplicates: int
    rejected: int
    batches: int
    pending: int
    connected: bool
    last_commit_at: float | None


@dataclass(frozen=True, slots=True)
class _Received:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # connection the message came on: its packet id means something only there
    received_at: datetime


def _is_transient(error: SQLAlchemyError) -> bool:
    """Database unreachable, locked or restarting (retry the batch), as opposed to a refused row."""
    if isinstance(error, OperationalError | InterfaceError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


class VitalsSubscriber:
    """Durable MQTT subscriber that stores vital signs (see the module docstring for the guarantees).

    It connects with MQTT v5, a fixed ``client_id``, ``clean_start=False`` and a session that never
    expires, so the broker queues the messages published while it is away and hands them over on
    reconnect. paho's network thread only queues received messages; one writer thread takes up to
    ``batch_size`` of them (waiting at most ``batch_delay_s`` for more), validates them, stores them in
    one transaction and then acknowledges them in the order received. ``receive_maximum`` (default
    ``2 * batch_size``) is how many unacknowledged messages the broker may hand over at once.

    Use :meth:`start` and :meth:`stop` once each (or ``with``); :meth:`wait_ready` blocks until
    subscribed. Devices must publish with QoS 1 for the guarantee: QoS-0 messages are stored when they
    arrive but the broker neither queues nor redelivers them.
    """

    def __init__(
        self,
        db: Database,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        client_id: str = "covidet-ingest",
        username: str | None = None,
        password: str | None = None,
        tls_ca: Path | str | None = None,
        batch_size: int = 500,
        batch_delay_s: float = 0.02,
        receive_maximum: int | None = None,
        keepalive_s: int = 30,
        reconnect_delay_s: tuple[int, int] = (1, 30),
    ) -> None:
        if batch_size < 1 or batch_delay_s < 0:
            raise ValueError("batch_size must be >= 1 and batch_delay_s >= 0")
        self.db = db
        self.host, self.port, self.client_id = host, port, client_id
        self.batch_size = batch_size
        self.batch_delay_s = batch_delay_s
        self._keepalive_s = keepalive_s
        self._receive_maximum = min(receive_maximum or 2 * batch_size, 65535)

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        client.reconnect_delay_set(*reconnect_delay_s)
        if username is not None:
            client.username_pw_set(username, password)
        if tls_ca is not None:
            # Verifies the broker's certificate and host name against this CA.
            client.tls_set(ca_certs=str(tls_ca), cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

        self._queue: queue.Queue[_Received] = queue.Queue()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._connection_lock = threading.Lock()
        self._generation = 0
        self._writer: threading.Thread | None = None
        self._patient_ids: dict[str, int] = {}
        self._counts = {"received": 0, "stored": 0, "duplicates": 0, "rejected": 0, "batches": 0}
        self._last_commit_at: float | None = None
        self._touched_patients: set[int] = set()
        #: Called on the writer thread with the database ids of the patients whose vital signs a
        #: batch stored (after commit and ack); ``covidet serve`` re-triages their images with it.
        self.on_stored: Callable[[set[int]], None] | None = None

    @classmethod
    def from_settings(cls, db: Database, settings: Any, **overrides: Any) -> VitalsSubscriber:
        """A subscriber configured from :class:`covidet.config.Settings` (``mqtt_*``) and ``overrides``."""
        options: dict[str, Any] = {
            "host": settings.mqtt_broker_host,
            "port": settings.mqtt_broker_port,
            "client_id": settings.mqtt_client_id,
            "username": settings.mqtt_username,
            "password": settings.mqtt_password,
            "tls_ca": settings.mqtt_tls_ca,
        }
        options.update({key: value for key, value in overrides.items() if value is not None})
        return cls(db, **options)

    # --- life cycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread and connect in the background (retrying until the broker answers)."""
        if self._writer is not None:
            raise RuntimeError("subscriber already started")
        self._writer = threading.Thread(target=self._write_loop, name="covidet-mqtt-writer", daemon=True)
        self._writer.start()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0xFFFFFFFF  # the session never expires (MQTT v5 3.1.2.11.2)
        properties.ReceiveMaximum = self._receive_maximum
        # clean_start=False on every connect, the first included: paho's default would wipe the session,
        # and with it the messages the broker queued while covidet was down.
        self._client.connect_async(
            self.host, self.port, keepalive=self._keepalive_s, clean_start=False, properties=properties
        )
        self._client.loop_start()
        logger.info("MQTT subscriber connecting to %s:%d as %r", self.host, self.port, self.client_id)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until connected and subscribed (or ``timeout`` seconds); true when ready."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Store and acknowledge what was received, then disconnect (the broker keeps the session).

        Messages that arrive meanwhile are left unacknowledged: the broker hands them over again on the
        next connect.
        """
        self._stopping.set()
        if self._writer is not None:
            self._writer.join(timeout)
            if self._writer.is_alive():
                logger.warning(
                    "MQTT writer still busy after %.0f s; its messages stay unacknowledged", timeout
                )
        # paho's loop logs a spurious "not connected" error after a requested disconnect.
        self._client.disable_logger()
        self._client.disconnect()
        self._client.loop_stop()
        logger.info("MQTT subscriber stopped: %s", self.stats())

    def __enter__(self) -> VitalsSubscriber:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> IngestStats:
        """A snapshot of the counters."""
        return IngestStats(
            **self._counts,
            pending=self._queue.qsize(),
            connected=self._ready.is_set(),
            last_commit_at=self._last_commit_at,
        )

    # --- paho callbacks (network thread: keep them short) -----------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        if reason_code.is_failure:
            logger.error("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        with self._connection_lock:
            self._generation += 1
        logger.info(
            "MQTT connected to %s:%d (session present: %s)", self.host, self.port, flags.session_present
        )
        # Subscribing again on every connect covers a session the broker lost; retained messages are
        # only sent for a new subscription (they would be duplicates otherwise).
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe(TOPIC_FILTER, options=options)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        logger.warning("cannot reach the MQTT broker %s:%d; retrying", self.host, self.port)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode], properties: Any
    ) -> None:
        if any(code.is_failure for code in reason_codes):
            logger.error("MQTT broker refused the subscription to %s: %s", TOPIC_FILTER, reason_codes)
            return
        self._ready.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        self._ready.clear()
        with self._connection_lock:
            self._generation += 1
        if not self._stopping.is_set():
            logger.warning(
                "MQTT connection to %s:%d lost (%s); reconnecting", self.host, self.port, reason_code
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._stopping.is_set():
            return  # not queued, so never acknowledged: the broker redelivers it on the next connect
        self._counts["received"] += 1
        self._queue.put(
            _Received(
                message.topic, bytes(message.payload), message.mid, message.qos, self._generation, utcnow()
            )
        )

    # --- writer thread ------------------------------------------------------------------------------

    def _next_batch(self) -> list[_Received] | None:
        """Up to ``batch_size`` messages; [] when idle; None when stopping and everything is stored."""
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return None if self._stopping.is_set() else []
        batch = [first]
        deadline = time.monotonic() + self.batch_delay_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            delay = 1.0
            while batch:
                try:
                    self._commit_and_ack(batch)
                    break
                except Exception:
                    # Unexpected (a bug, a full disk): skipping the batch would leave it unacknowledged
                    # until the next reconnect and hold the broker's in-flight window, so retry it.
                    logger.exception(
                        "MQTT writer failed on a batch of %d messages; retrying in %.0f s", len(batch), delay
                    )
                    if self._stopping.wait(delay):
                        return  # unacknowledged: the broker redelivers them on the next connect
                    delay = min(delay * 2, 60.0)

    def _commit_and_ack(self, batch: list[_Received]) -> None:
        delay = 0.5
        while True:
            try:
                stored, duplicates, rejected = self._store(batch)
                break
            except SQLAlchemyError as error:
                if not _is_transient(error):
                    # One reading the database refuses must not hold up the others: store one by one.
                    self._patient_ids.clear()
                    stored, duplicates, rejected = self._store_one_by_one(batch)
                    break
                if self._stopping.is_set():
                    logger.error(
                        "database unavailable while stopping (%s); %d messages left unacknowledged for the "
                        "broker to redeliver",
                        error.__class__.__name__,
                        len(batch),
                    )
                    return
                logger.error(
                    "database unavailable (%s); retrying in %.1f s", str(error).splitlines()[0], delay
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)
        self._last_commit_at = time.time()
        self._ack(batch)
        touched, self._touched_patients = self._touched_patients, set()
        if self.on_stored is not None and touched:
            # After the ack: re-triage is the consumer's work and must not delay the broker.
            try:
                self.on_stored(touched)
            except Exception:
                logger.exception("on_stored callback failed for %d patient(s)", len(touched))
        self._counts["stored"] += stored
        self._counts["duplicates"] += duplicates
        self._counts["rejected"] += len(rejected)
        self._counts["batches"] += 1
        for item, reason in rejected:
            logger.warning("rejected MQTT message on %s: %s", item.topic, reason)

    def _ack(self, batch: Sequence[_Received]) -> None:
        # A packet id is only meaningful on the connection it came on: after a reconnect the broker
        # redelivers unacknowledged messages (with the same ids) and may reuse acknowledged ids for new
        # messages, so acknowledging an old id on the new connection could acknowledge a message that is
        # not stored yet. Old-connection messages are therefore left to their redelivery (deduplicated).
        with self._connection_lock:
            for item in batch:
                if item.qos > 0 and item.generation == self._generation:
                    self._client.ack(item.mid, item.qos)

    def _store_one_by_one(self, batch: list[_Received]) -> tuple[int, int, list[tuple[_Received, str]]]:
        stored = duplicates = 0
        rejected: list[tuple[_Received, str]] = []
        for item in batch:
            try:
                new, duplicate, refused = self._store([item])
            except SQLAlchemyError as error:
                if _is_transient(error):
                    raise
                reason = f"database refused the reading: {str(getattr(error, 'orig', error)).splitlines()[0]}"
                with self.db.session(write=True) as session:
                    queries.add_rejected(
                        session, channel="mqtt", source=item.topic, reason=reason, payload=item.payload
                    )
                new, duplicate, refused = 0, 0, [(item, reason)]
            stored, duplicates, rejected = stored + new, duplicates + duplicate, rejected + refused
        return stored, duplicates, rejected

    def _store(self, batch: Sequence[_Received]) -> tuple[int, int, list[tuple[_Received, str]]]:
        """Validate and store ``batch`` in one transaction: (new rows, duplicates, rejected with reasons)."""
        readings: list[tuple[int, _Received, int, VitalSign]] = []
        refused: list[tuple[int, _Received, str]] = []
        for position, item in enumerate(batch):
            try:
                device_id = device_id_from_topic(item.topic)
                readings.append((position, item, device_id, parse_vitals(item.payload, now=item.received_at)))
            except VitalsRejected as error:
                refused.append((position, item, error.reason))
        new_patients: dict[str, int] = {}
        with self.db.session(write=True) as session:
            devices: dict[int, Device | None] = {}
            rows: list[dict[str, Any]] = []
            for position, item, device_id, vital in readings:
                if device_id not in devices:
                    devices[device_id] = queries.device_by_id(session, device_id)
                reason = _device_problem(devices[device_id], device_id)
                if reason is not None:
                    refused.append((position, item, reason))
                    continue
                patient_id = self._patient_ids.get(vital.patient_id) or new_patients.get(vital.patient_id)
                if patient_id is None:
                    patient_id = queries.get_or_create_patient(session, vital.patient_id).id
                    new_patients[vital.patient_id] = patient_id
                rows.append(
                    {
                        "device_id": device_id,
                        "patient_id": patient_id,
                        "measured_at": vital.measured_at,
                        "received_at": item.received_at,
                        **{column: getattr(vital, column) for column in _COLUMNS.values()},
                    }
                )
            stored = queries.add_vital_signs(session, rows)
            # In the order received, so that rejected_messages reads like the stream.
            rejected = [(item, reason) for _, item, reason in sorted(refused, key=lambda entry: entry[0])]
            for item, reason in rejected:
                queries.add_rejected(
                    session, channel="mqtt", source=item.topic, reason=reason, payload=item.payload
                )
        # Cached only once committed: a rolled-back patient row must not be referenced later.
        if len(self._patient_ids) > 100_000:
            self._patient_ids.clear()
        self._patient_ids.update(new_patients)
        self._touched_patients.update(row["patient_id"] for row in rows)
        return stored, len(rows) - stored, rejected


def _device_problem(device: Device | None, device_id: int) -> str | None:
    if device is None:
        return f"unknown device {device_id}"
    if not device.active:
        return f"device {device_id} ({device.name}) is inactive"
    if device.kind != DeviceKind.SENSOR.value:
        return f"device {device_id} ({device.name}) is a {device.kind}, not a sensor"
    return None

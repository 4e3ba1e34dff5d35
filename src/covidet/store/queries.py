"""Query functions over the store: the only place ingest, API and worker code writes SQL.

Functions take a :class:`~sqlalchemy.orm.Session` and never commit; the caller owns the transaction
(:meth:`covidet.store.db.Database.session`).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict, TypeVar

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from covidet.store.models import (
    Base,
    Device,
    DeviceKind,
    Image,
    Inference,
    InferenceStatus,
    Patient,
    RejectedMessage,
    Study,
    VitalSignRecord,
)

__all__ = [
    "DeviceCredentials",
    "StoreCounts",
    "add_image",
    "add_rejected",
    "add_vital_signs",
    "counts",
    "create_device",
    "device_by_ae_title",
    "device_by_api_key",
    "device_by_id",
    "get_or_create_patient",
    "get_or_create_study",
    "hash_api_key",
    "image_by_sop_instance_uid",
    "list_devices",
    "mosquitto_password_hash",
    "vitals_topic",
]

T = TypeVar("T")

#: Rejected payloads are kept up to this many bytes.
REJECTED_PAYLOAD_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """A new device and its secrets, shown once (only hashes are stored)."""

    device_id: int
    name: str
    kind: str
    ae_title: str | None
    api_key: str | None
    mqtt_username: str | None
    mqtt_password: str | None
    vitals_topic: str | None

    def to_json(self) -> dict[str, str | int | None]:
        return {
            "device_id": self.device_id,
            "name": self.name,
            "kind": self.kind,
            "ae_title": self.ae_title,
            "api_key": self.api_key,
            "mqtt_username": self.mqtt_username,
            "mqtt_password": self.mqtt_password,
            "vitals_topic": self.vitals_topic,
        }


def hash_api_key(api_key: str) -> str:
    """SHA-256 hex of an API key. Keys are 256-bit random, so a fast hash is enough (unlike passwords)."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def mosquitto_password_hash(password: str, *, iterations: int = 101) -> str:
    """A Mosquitto 2 password-file hash: ``$7$<iterations>$<salt b64>$<PBKDF2-SHA512 b64>``."""
    import base64

    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def vitals_topic(device_id: int) -> str:
    """The only MQTT topic a sensor device may publish to."""
    return f"covidet/devices/{device_id}/vitals"


def create_device(
    session: Session, name: str, kind: DeviceKind | str, *, ae_title: str | None = None
) -> DeviceCredentials:
    """Register a device. Every device gets an API key (HTTPS upload); sensors also get MQTT
    credentials; modalities and workstations need an AE title (default: the name, upper-cased, at most
    16 chars).

    Raises:
        ValueError: unknown kind, bad AE title, or a name/AE title already registered.
    """
    kind = DeviceKind(kind)
    if kind in (DeviceKind.MODALITY, DeviceKind.WORKSTATION) and ae_title is None:
        ae_title = "".join(c for c in name.upper() if c.isascii() and c.isprintable() and c != "\\")[:16]
    if ae_title is not None:
        ae_title = ae_title.strip()
        printable = ae_title.isascii() and ae_title.isprintable() and "\\" not in ae_title
        if not ae_title or len(ae_title) > 16 or not printable:
            raise ValueError(f"AE title {ae_title!r} must be 1-16 ASCII characters without backslash")
        if session.scalar(select(Device.id).where(Device.ae_title == ae_title)) is not None:
            raise ValueError(f"AE title {ae_title!r} is already registered")
    if session.scalar(select(Device.id).where(Device.name == name)) is not None:
        raise ValueError(f"a device named {name!r} already exists")
    api_key = "cvd_" + secrets.token_urlsafe(32)
    device = Device(name=name, kind=kind.value, ae_title=ae_title, api_key_sha256=hash_api_key(api_key))
    session.add(device)
    session.flush()  # assigns the id
    mqtt_username = mqtt_password = topic = None
    if kind is DeviceKind.SENSOR:
        mqtt_username = f"device-{device.id}"
        mqtt_password = secrets.token_urlsafe(24)
        device.mqtt_username = mqtt_username
        device.mqtt_password_hash = mosquitto_password_hash(mqtt_password)
        topic = vitals_topic(device.id)
    return DeviceCredentials(
        device.id, name, kind.value, ae_title, api_key, mqtt_username, mqtt_password, topic
    )


def list_devices(session: Session) -> list[Device]:
    return list(session.scalars(select(Device).order_by(Device.id)))


def device_by_id(session: Session, device_id: int) -> Device | None:
    return session.get(Device, device_id)


def device_by_ae_title(session: Session, ae_title: str) -> Device | None:
    """The active device with this calling AE title (surrounding spaces ignored)."""
    return session.scalar(select(Device).where(Device.ae_title == ae_title.strip(), Device.active.is_(True)))


def device_by_api_key(session: Session, api_key: str) -> Device | None:
    """The active device owning ``api_key``, or ``None``."""
    return session.scalar(
        select(Device).where(Device.api_key_sha256 == hash_api_key(api_key), Device.active.is_(True))
    )


def _get_or_create(session: Session, find: Callable[[], T | None], make: Callable[[], T]) -> T:
    """Find a row or insert it; a concurrent insert of the same key (unique violation) is re-read."""
    existing = find()
    if existing is not None:
        return existing
    try:
        with session.begin_nested():
            row = make()
            session.add(row)
            session.flush()
        return row
    except IntegrityError:
        existing = find()
        if existing is None:
            raise
        return existing


def get_or_create_patient(session: Session, patient_key: str, *, name: str | None = None) -> Patient:
    key = patient_key.strip()[:64]
    return _get_or_create(
        session,
        lambda: session.scalar(select(Patient).where(Patient.patient_key == key)),
        lambda: Patient(patient_key=key, name=name),
    )


def get_or_create_study(
    session: Session,
    study_instance_uid: str,
    patient: Patient,
    *,
    accession_number: str | None = None,
    description: str | None = None,
    study_datetime: datetime | None = None,
) -> Study:
    return _get_or_create(
        session,
        lambda: session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid)),
        lambda: Study(
            study_instance_uid=study_instance_uid,
            patient_id=patient.id,
            accession_number=accession_number,
            description=description,
            study_datetime=study_datetime,
        ),
    )


def image_by_sop_instance_uid(session: Session, sop_instance_uid: str) -> Image | None:
    return session.scalar(select(Image).where(Image.sop_instance_uid == sop_instance_uid))


def add_image(session: Session, image: Image) -> Image:
    """Insert ``image`` (a new, accepted image) and flush, so that ``image.id`` is set; returns it.

    Raises:
        IntegrityError: its SOP Instance UID is already stored (e.g. by a concurrent association);
            the session's transaction is then rolled back by its owner and nothing was written.
    """
    session.add(image)
    session.flush()
    return image


def add_rejected(
    session: Session, *, channel: str, reason: str, source: str | None = None, payload: bytes | None = None
) -> RejectedMessage:
    """Keep refused input with its reason (payload cut to 64 KiB)."""
    row = RejectedMessage(
        channel=channel,
        source=source[:255] if source else None,
        reason=reason,
        payload=payload[:REJECTED_PAYLOAD_LIMIT] if payload is not None else None,
    )
    session.add(row)
    return row


class StoreCounts(TypedDict):
    """What :func:`counts` returns (``covidet stats``; the JSON keys in this order)."""

    images: int
    studies: int
    patients: int
    vitals: int
    rejected_messages: int
    devices: int
    inferences: int
    failed_inferences: int
    priorities: dict[str, int]


def counts(session: Session) -> StoreCounts:
    """Counts for ``covidet stats``: images, studies, patients, vitals, rejected_messages, devices,
    inferences (succeeded), failed_inferences, and priorities ``{"urgent": n, "high": n, "routine": n}``
    (images by current priority)."""

    def count(model: type[Base], *where: ColumnElement[bool]) -> int:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    by_priority = dict(
        session.execute(
            select(Image.priority, func.count()).where(Image.priority.is_not(None)).group_by(Image.priority)
        ).all()
    )
    return StoreCounts(
        images=count(Image),
        studies=count(Study),
        patients=count(Patient),
        vitals=count(VitalSignRecord),
        rejected_messages=count(RejectedMessage),
        devices=count(Device),
        inferences=count(Inference, Inference.status == InferenceStatus.SUCCEEDED.value),
        failed_inferences=count(Inference, Inference.status == InferenceStatus.FAILED.value),
        priorities={p: int(by_priority.get(p, 0)) for p in ("urgent", "high", "routine")},
    )


def add_vital_signs(session: Session, rows: Iterable[Mapping[str, object]]) -> int:
    """Insert vital-sign rows in bulk; returns how many were new.

    Each row maps :class:`VitalSignRecord` column names to values: ``device_id``, ``patient_id``
    (``patients.id``), ``measured_at`` (timezone-aware), optional ``received_at`` (default now) and the
    measurements ``spo2_percent`` (%), ``temperature_c`` (°C), ``heart_rate_per_min``,
    ``respiratory_rate_per_min`` (/min) and ``systolic_bp_mmhg`` (mmHg), absent ones ``None``. A row
    whose (device_id, patient_id, measured_at) is already stored, e.g. a QoS-1 redelivery, is skipped
    (``INSERT ... ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL), never an error.
    """
    from sqlalchemy.dialects import postgresql, sqlite

    from covidet.store.models import utcnow

    dialect = session.get_bind().dialect.name
    # Both dialects' INSERT ... ON CONFLICT DO NOTHING, spelled the same way.
    insert: Callable[[type[VitalSignRecord]], postgresql.Insert | sqlite.Insert]
    if dialect == "postgresql":
        insert = postgresql.insert
    elif dialect == "sqlite":
        insert = sqlite.insert
    else:  # pragma: no cover - covidet supports these two backends
        raise NotImplementedError(f"add_vital_signs: unsupported database {dialect!r}")
    measurements = (
        "spo2_percent",
        "temperature_c",
        "heart_rate_per_min",
        "respiratory_rate_per_min",
        "systolic_bp_mmhg",
    )
    now = utcnow()
    # executemany needs the same keys in every parameter set.
    normalised = [
        {
            "device_id": row.get("device_id"),
            "patient_id": row["patient_id"],
            "measured_at": row["measured_at"],
            "received_at": row.get("received_at") or now,
            **{key: row.get(key) for key in measurements},
        }
        for row in rows
    ]
    if not normalised:
        return 0
    statement = (
        insert(VitalSignRecord)
        .on_conflict_do_nothing(index_elements=["device_id", "patient_id", "measured_at"])
        # SQLAlchemy keeps an INSERT's rowcount (rows actually inserted) only when asked to.
        .execution_options(preserve_rowcount=True)
    )
    # One statement, many parameter sets (DB-API executemany): ~10x faster than a multi-row VALUES
    # statement, which SQLAlchemy compiles afresh for each row count.
    return int(session.connection().execute(statement, normalised).rowcount)

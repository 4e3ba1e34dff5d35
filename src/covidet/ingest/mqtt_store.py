"""Validate and store batches of received MQTT messages: vital-sign rows, or ``rejected_messages`` rows.

:class:`VitalsStore` is the subscriber's database side. It knows nothing of MQTT connections or acks:
the subscriber (``covidet.ingest.mqtt_subscriber``) acknowledges a batch only after :meth:`store` (or
:meth:`store_one_by_one`) returned, so what it acknowledges is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from covidet.domain import VitalSign
from covidet.ingest.mqtt_payload import (
    MAX_PAYLOAD_BYTES,
    VITAL_COLUMNS,
    VitalsRejected,
    device_id_from_topic,
    parse_vitals,
)
from covidet.store import queries
from covidet.store.db import Database
from covidet.store.models import Device, DeviceKind

__all__ = ["ReceivedMessage", "StoreResult", "VitalsStore", "is_transient"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A message as the network thread handed it over.

    ``rejection`` is set when the message was refused on arrival (a payload over the size limit): it
    is then recorded in ``rejected_messages`` with that reason and ``payload`` holds only its start.
    """

    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # connection the message came on: its packet id means something only there
    received_at: datetime
    rejection: str | None = None


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What one call stored: new rows, duplicates (already stored), and the refused with reasons."""

    stored: int
    duplicates: int
    rejected: list[tuple[ReceivedMessage, str]]

    def __add__(self, other: StoreResult) -> StoreResult:
        return StoreResult(
            self.stored + other.stored, self.duplicates + other.duplicates, self.rejected + other.rejected
        )


def is_transient(error: SQLAlchemyError) -> bool:
    """Database unreachable, locked or restarting (retry the batch), as opposed to a refused row."""
    if isinstance(error, OperationalError | InterfaceError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def _device_problem(device: Device | None, device_id: int) -> str | None:
    if device is None:
        return f"unknown device {device_id}"
    if not device.active:
        return f"device {device_id} ({device.name}) is inactive"
    if device.kind != DeviceKind.SENSOR.value:
        return f"device {device_id} ({device.name}) is a {device.kind}, not a sensor"
    return None


class VitalsStore:
    """Stores batches in one transaction each; caches patient ids; remembers the patients it touched.

    ``max_payload_bytes`` is the payload limit :func:`parse_vitals` applies.
    """

    def __init__(self, db: Database, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        self.db = db
        self.max_payload_bytes = max_payload_bytes
        self._patient_ids: dict[str, int] = {}
        self._touched_patients: set[int] = set()

    def take_touched_patients(self) -> set[int]:
        """Database ids of the patients whose vital signs were stored since the last call."""
        touched, self._touched_patients = self._touched_patients, set()
        return touched

    def forget_patients(self) -> None:
        """Drop the patient-id cache (after a failed transaction it may name rolled-back rows)."""
        self._patient_ids.clear()

    def _parse(self, item: ReceivedMessage) -> tuple[int, VitalSign]:
        if item.rejection is not None:
            raise VitalsRejected(item.rejection)
        device_id = device_id_from_topic(item.topic)
        return device_id, parse_vitals(item.payload, now=item.received_at, max_bytes=self.max_payload_bytes)

    def store(self, batch: Sequence[ReceivedMessage]) -> StoreResult:
        """Validate and store ``batch`` in one transaction.

        Raises:
            SQLAlchemyError: the transaction failed (nothing of the batch is stored).
        """
        readings: list[tuple[int, ReceivedMessage, int, VitalSign]] = []
        refused: list[tuple[int, ReceivedMessage, str]] = []
        for position, item in enumerate(batch):
            try:
                device_id, vital = self._parse(item)
                readings.append((position, item, device_id, vital))
            except VitalsRejected as error:
                refused.append((position, item, error.reason))
        new_patients: dict[str, int] = {}
        with self.db.session(write=True) as session:
            devices: dict[int, Device | None] = {}
            rows: list[dict[str, object]] = []
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
                        **{column: getattr(vital, column) for column in VITAL_COLUMNS.values()},
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
        return StoreResult(stored, len(rows) - stored, rejected)

    def store_one_by_one(self, batch: Sequence[ReceivedMessage]) -> StoreResult:
        """Store each message in its own transaction; one the database refuses is recorded as rejected.

        Raises:
            SQLAlchemyError: a transient database error (:func:`is_transient`).
        """
        total = StoreResult(0, 0, [])
        for item in batch:
            try:
                result = self.store([item])
            except SQLAlchemyError as error:
                if is_transient(error):
                    raise
                reason = f"database refused the reading: {str(getattr(error, 'orig', error)).splitlines()[0]}"
                with self.db.session(write=True) as session:
                    queries.add_rejected(
                        session, channel="mqtt", source=item.topic, reason=reason, payload=item.payload
                    )
                result = StoreResult(0, 0, [(item, reason)])
            total = total + result
        return total

"""The vitals payload: what a sensor publishes, and how it becomes a :class:`~covidet.domain.VitalSign`.

A sensor publishes one UTF-8 JSON object per set of measurements (:class:`VitalsPayload`) to
``covidet/devices/<device id>/vitals``. :func:`parse_vitals` is the only way in: it returns a
:class:`VitalSign` or raises :class:`VitalsRejected` with a one-line reason, and nothing else, whatever
the bytes (a property-based test, ``tests/ingest/test_mqtt_fuzz.py``, holds it to that). See
``docs/mqtt.md``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from covidet.domain import VitalSign
from covidet.store.models import utcnow

__all__ = [
    "EARLIEST_TIMESTAMP",
    "MAX_CLOCK_SKEW",
    "MAX_PAYLOAD_BYTES",
    "TOPIC_FILTER",
    "VITAL_COLUMNS",
    "VITAL_LIMITS",
    "VitalsPayload",
    "VitalsRejected",
    "device_id_from_topic",
    "oversize_reason",
    "parse_vitals",
]

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

#: Payload field -> VitalSignRecord / VitalSign attribute.
VITAL_COLUMNS = {
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
    def _timestamp_is_text(cls, value: object) -> str:
        # pydantic would also take a number as Unix time; the contract is ISO 8601 text only.
        if not isinstance(value, str):
            raise ValueError("must be an ISO 8601 string")
        return value

    @field_validator("timestamp")
    @classmethod
    def _timestamp_is_aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("has no UTC offset (add 'Z' or '+hh:mm')")
        try:
            return value.astimezone(UTC)
        except OverflowError:
            # 9999-12-31T23:59:59-01:00 is year 10000 in UTC: Python's datetime cannot hold it. Found by
            # the fuzzer; an OverflowError escaping here stalled the subscriber's writer on the message.
            raise ValueError("is out of range once converted to UTC") from None

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
            **{column: getattr(self, name) for name, column in VITAL_COLUMNS.items()},
        )


def one_line(text: str) -> str:
    """``text`` with every non-printable character (newline, carriage return, escape...) escaped as in a
    Python literal, so that text from a payload cannot forge extra log lines or terminal sequences."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text
    )


class VitalsRejected(ValueError):
    """A message that cannot be stored; ``reason`` is one line for ``rejected_messages`` and the log
    (non-printable characters are escaped: a reason quotes field names and values from the payload)."""

    def __init__(self, reason: str) -> None:
        reason = one_line(reason)
        super().__init__(reason)
        self.reason = reason


def device_id_from_topic(topic: str) -> int:
    """The device id in ``covidet/devices/<id>/vitals``. Raises :class:`VitalsRejected` otherwise."""
    match = _TOPIC_RE.fullmatch(topic)
    if match is None:
        raise VitalsRejected(f"topic {topic!r} is not covidet/devices/<device id>/vitals")
    return int(match.group(1))


#: Longest echo of a refused value in a reason: the reason is one log line, not a copy of the payload.
_MAX_ECHO = 100


def _echo(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_ECHO else f"{text[: _MAX_ECHO - 3]}..."


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"])
        if len(location) > _MAX_ECHO:  # an unknown field's name is the sender's text, of any length
            location = f"{location[: _MAX_ECHO - 3]}..."
        message = item["msg"].removeprefix("Value error, ")
        if not location:  # a rule over the whole object
            parts.append(message)
        elif item["type"] in {"missing", "extra_forbidden"}:
            parts.append(f"{location}: {message}")
        else:
            parts.append(f"{location}: {message} (got {_echo(item['input'])})")
    return "; ".join(parts)


def oversize_reason(size: int, limit: int) -> str:
    """The rejection reason of a payload of ``size`` bytes over ``limit`` (one text for every layer)."""
    return f"payload of {size} bytes exceeds {limit} bytes"


def parse_vitals(
    payload: bytes, *, now: datetime | None = None, max_bytes: int = MAX_PAYLOAD_BYTES
) -> VitalSign:
    """Validate a published payload (UTF-8 JSON, :class:`VitalsPayload`) into a :class:`VitalSign`.

    ``now`` (default: the current time) bounds the timestamp: at most :data:`MAX_CLOCK_SKEW` later.
    ``max_bytes`` bounds the payload (``COVIDET_MQTT_MAX_PAYLOAD_BYTES`` in the subscriber).

    Contract (held by property-based tests): for any bytes, the result is a :class:`VitalSign` whose
    ``patient_id`` is 1-64 printable characters, whose ``measured_at`` is UTC, not before
    :data:`EARLIEST_TIMESTAMP` and at most :data:`MAX_CLOCK_SKEW` after ``now``, and whose values lie in
    :data:`VITAL_LIMITS`; or :class:`VitalsRejected`. No other exception escapes.

    Raises:
        VitalsRejected: oversized or malformed JSON, schema or range errors, an implausible timestamp;
            the reason names every offending field with the value received.
    """
    if len(payload) > max_bytes:
        raise VitalsRejected(oversize_reason(len(payload), max_bytes))
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

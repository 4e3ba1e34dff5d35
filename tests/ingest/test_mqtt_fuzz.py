"""Property-based fuzzing of the MQTT payload parser, :func:`covidet.ingest.mqtt.parse_vitals`.

Whatever a sensor (or an intruder) publishes, the parser returns a reading that keeps the documented
contract or raises :class:`VitalsRejected` with a one-line reason; and valid readings round-trip.
Every crash the fuzzer found is fixed and pinned here as an ``@example``.

The normal test run tries ``FUZZ_MAX_EXAMPLES`` inputs per property (default 300, no example
database); ``make fuzz`` runs the same properties with many more (and keeps failures in
``out/hypothesis/``, ignored by git, so that they replay first next time).
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from covidet.domain import VitalSign
from covidet.ingest.mqtt import (
    EARLIEST_TIMESTAMP,
    MAX_CLOCK_SKEW,
    MAX_PAYLOAD_BYTES,
    VITAL_LIMITS,
    VitalsRejected,
    parse_vitals,
)
from covidet.ingest.mqtt_payload import VITAL_COLUMNS

#: The time of receipt every property uses (a fixed one: the properties must not depend on the clock).
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
FIELDS = ["patient_id", "timestamp", *VITAL_LIMITS]

_FUZZING = "FUZZ_MAX_EXAMPLES" in os.environ
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_MAX_EXAMPLES", "300")),
    deadline=None,  # no timing assertions: a slow CI machine must not fail a property
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # Normal runs leave nothing behind; `make fuzz` keeps what fails, to replay it first next time.
    database=DirectoryBasedExampleDatabase(Path(__file__).parents[2] / "out" / "hypothesis")
    if _FUZZING
    else None,
)


def check_outcome(payload: bytes) -> VitalSign | None:
    """Parse ``payload``: the documented contract holds for a reading; a rejection is one line."""
    try:
        vital = parse_vitals(payload, now=NOW)
    except VitalsRejected as rejected:
        assert isinstance(rejected.reason, str) and rejected.reason
        # One line: a reason goes into the log, where a newline would forge a second record.
        assert "\n" not in rejected.reason and "\r" not in rejected.reason
        assert len(rejected.reason) < 4096
        return None
    assert 1 <= len(vital.patient_id) <= 64 and vital.patient_id.isprintable()
    assert vital.patient_id == vital.patient_id.strip()
    vital.patient_id.encode("utf-8")  # storable: no lone surrogates
    assert vital.measured_at.utcoffset() == timedelta(0)
    assert EARLIEST_TIMESTAMP <= vital.measured_at <= NOW + MAX_CLOCK_SKEW
    values = {name: getattr(vital, column) for name, column in VITAL_COLUMNS.items()}
    assert any(value is not None for value in values.values())
    for name, value in values.items():
        if value is not None:
            low, high, _ = VITAL_LIMITS[name]
            assert isinstance(value, float) and math.isfinite(value) and low <= value <= high
    return vital


# ------------------------------------------------------------------------------------- strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=20,
)
#: Offsets a sensor may send, up to the extremes ISO 8601 allows (±23:59).
offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
#: Any ISO 8601 text with an offset, from year 1 to 9999, with the first and last days drawn often:
#: converted to UTC they may fall outside what Python's datetime holds (that was a crash).
moments = (
    st.datetimes()
    | st.datetimes(max_value=datetime(1, 1, 2))
    | st.datetimes(min_value=datetime(9999, 12, 30, 23))
)
any_timestamps = st.builds(lambda moment, offset: moment.replace(tzinfo=offset).isoformat(), moments, offsets)
#: Object keys: the real fields most of the time, anything (control characters included) otherwise.
keys = st.sampled_from(FIELDS) | st.text(max_size=12)


@st.composite
def json_ish_objects(draw: st.DrawFn) -> dict[str, Any]:
    """Objects near the schema: real keys with arbitrary values, sometimes a plausible timestamp."""
    obj = draw(st.dictionaries(keys, json_values, max_size=8))
    if draw(st.booleans()):
        obj["timestamp"] = draw(any_timestamps)
    return obj


def to_bytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


printable_ids = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=64
).filter(lambda text: text.strip() != "" and text.isprintable())


@st.composite
def valid_readings(draw: st.DrawFn) -> dict[str, Any]:
    """A reading the schema accepts: printable id, timestamp since 2000 up to ``NOW`` with any offset,
    one to five measurements within their limits (JSON floats or integers)."""
    moment = draw(st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2026, 5, 31)))
    reading: dict[str, Any] = {
        "patient_id": draw(printable_ids),
        "timestamp": moment.replace(tzinfo=UTC).astimezone(draw(offsets)).isoformat(),
    }
    names = draw(st.lists(st.sampled_from(list(VITAL_LIMITS)), min_size=1, max_size=5, unique=True))
    for name in names:
        low, high, _ = VITAL_LIMITS[name]
        reading[name] = draw(
            st.floats(min_value=low, max_value=high)
            | st.integers(min_value=math.ceil(low), max_value=int(high))
        )
    return reading


# ------------------------------------------------------------------------------------- properties


@FUZZ
@given(st.binary(max_size=2048))
@example(b"\xff\xfe")
@example(b"[" * 5000)
@example(b" " * (MAX_PAYLOAD_BYTES + 1))
def test_any_bytes_are_parsed_or_rejected(payload: bytes) -> None:
    check_outcome(payload)


@FUZZ
@given(json_values.map(to_bytes))
def test_any_json_value_is_parsed_or_rejected(payload: bytes) -> None:
    check_outcome(payload)


@FUZZ
@given(json_ish_objects().map(to_bytes))
# Crash found by this property: a timestamp whose UTC time falls outside years 1-9999 raised OverflowError
# out of the parser (the subscriber's writer then retried that batch forever).
@example(b'{"patient_id": "P", "timestamp": "9999-12-31T23:59:59-23:59", "spo2": 95}')
@example(b'{"patient_id": "P", "timestamp": "0001-01-01T00:00:00+00:01", "spo2": 95}')
# Found by test_any_json_value_is_parsed_or_rejected (key "\n"): an unknown field's name went into the
# reason as is, so a key with a newline forged a second log line.
@example(b'{"patient_id": "P", "timestamp": "2024-01-01T00:00:00Z", "spo2": 95, "x\\nCRITICAL forged": 1}')
@example(b'{"patient_id": "P", "timestamp": "2024-01-01T00:00:00Z", "spo2": 1' + b"0" * 400 + b"}")
def test_objects_near_the_schema_are_parsed_or_rejected(payload: bytes) -> None:
    check_outcome(payload)


@FUZZ
@given(valid_readings())
def test_valid_readings_round_trip(reading: dict[str, Any]) -> None:
    vital = check_outcome(to_bytes(reading))
    assert vital is not None, f"refused a valid reading: {reading}"
    assert vital.patient_id == reading["patient_id"].strip()
    assert vital.measured_at == datetime.fromisoformat(reading["timestamp"]).astimezone(UTC)
    for name, column in VITAL_COLUMNS.items():
        expected = reading.get(name)
        assert getattr(vital, column) == (None if expected is None else float(expected))

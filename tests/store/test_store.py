"""The store on both backends: migrations, devices and credentials, get-or-create under concurrency."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from covidet.store import Database, Device, Patient, VitalSignRecord, queries
from covidet.store.db import alembic_config
from covidet.store.models import Base


@pytest.fixture
def db(database_url: str):
    database = Database(database_url)
    yield database
    database.dispose()


def test_migrations_create_every_table_and_are_idempotent(database_url: str) -> None:
    first = Database(database_url)
    tables = set(inspect(first.engine).get_table_names())
    assert {"devices", "patients", "studies", "images", "vital_signs", "rejected_messages"} <= tables
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    with first.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head
        # The migrations build exactly the schema the models declare (nothing missing, nothing extra).
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert differences == []
    first.dispose()
    Database(database_url).dispose()  # running the migrations again on an up-to-date database is a no-op


def test_create_device_returns_secrets_once_and_stores_only_hashes(db: Database) -> None:
    with db.session(write=True) as session:
        sensor = queries.create_device(session, "oximeter-bed-4", "sensor")
        modality = queries.create_device(session, "ward-dr", "modality", ae_title="WARD_DR")
    assert sensor.mqtt_username == f"device-{sensor.device_id}"
    assert sensor.vitals_topic == f"covidet/devices/{sensor.device_id}/vitals"
    assert sensor.api_key and sensor.mqtt_password and modality.ae_title == "WARD_DR"
    with db.session() as session:
        stored = session.get(Device, sensor.device_id)
        assert stored is not None
        assert stored.api_key_sha256 == queries.hash_api_key(sensor.api_key)
        assert sensor.api_key not in (stored.api_key_sha256 or "")
        assert stored.mqtt_password_hash and stored.mqtt_password_hash.startswith("$7$101$")
        assert sensor.mqtt_password not in stored.mqtt_password_hash
        assert queries.device_by_api_key(session, sensor.api_key).id == sensor.device_id
        assert queries.device_by_api_key(session, sensor.api_key + "x") is None
        assert queries.device_by_ae_title(session, " WARD_DR ").id == modality.device_id
        assert queries.device_by_ae_title(session, "OTHER") is None


@pytest.mark.parametrize(
    ("name", "kind", "ae_title", "message"),
    [
        ("ward-dr", "modality", "WARD_DR", "already"),
        ("new", "modality", "WARD_DR", "AE title 'WARD_DR' is already registered"),
        ("new", "modality", "X" * 17, "1-16 ASCII"),
        ("new", "toaster", None, "toaster"),
    ],
)
def test_create_device_refuses_duplicates_and_bad_values(db: Database, name, kind, ae_title, message) -> None:
    with db.session(write=True) as session:
        queries.create_device(session, "ward-dr", "modality", ae_title="WARD_DR")
    with pytest.raises(ValueError, match=message), db.session(write=True) as session:
        queries.create_device(session, name, kind, ae_title=ae_title)
    with db.session() as session:
        assert len(queries.list_devices(session)) == 1


def test_times_are_stored_and_read_back_as_utc(db: Database) -> None:
    measured = datetime(2026, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    with db.session(write=True) as session:
        patient = queries.get_or_create_patient(session, "P-1")
        session.add(VitalSignRecord(patient_id=patient.id, measured_at=measured, spo2_percent=93.0))
    with db.session() as session:
        row = session.scalars(select(VitalSignRecord)).one()
    assert row.measured_at == measured and row.measured_at.tzinfo == UTC
    assert row.measured_at.hour == 7
    with pytest.raises(Exception, match="naive"), db.session(write=True) as session:
        session.add(VitalSignRecord(patient_id=patient.id, measured_at=datetime(2026, 3, 1), spo2_percent=90))


def test_concurrent_get_or_create_makes_one_patient(db: Database) -> None:
    """Eight threads race to create the same patient: one row, and every thread gets it."""
    ids: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        try:
            barrier.wait()
            with db.session(write=True) as session:
                ids.append(queries.get_or_create_patient(session, "RACE-1").id)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(ids)) == 1
    with db.session() as session:
        assert session.scalar(select(Patient.id).where(Patient.patient_key == "RACE-1")) == ids[0]
        assert queries.counts(session)["patients"] == 1


def test_counts_and_rejected_payload_is_cut_to_64_kib(db: Database) -> None:
    with db.session(write=True) as session:
        queries.add_rejected(session, channel="mqtt", source="t", reason="bad", payload=b"x" * 100_000)
    with db.session() as session:
        counts = queries.counts(session)
        assert counts == {
            "images": 0,
            "studies": 0,
            "patients": 0,
            "vitals": 0,
            "rejected_messages": 1,
            "devices": 0,
            "inferences": 0,
            "failed_inferences": 0,
            "priorities": {"urgent": 0, "high": 0, "routine": 0},
        }
        from covidet.store import RejectedMessage

        assert len(session.scalars(select(RejectedMessage)).one().payload) == 64 * 1024

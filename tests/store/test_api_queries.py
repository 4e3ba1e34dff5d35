"""The store functions the API routes call instead of their own SQL (issue 20): the device
registration checks and the health ping, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from covidet.store import Database, queries
from covidet.store.device_queries import ae_title_taken, device_name_taken
from covidet.store.health import ping


@pytest.fixture
def db(database_url: str):
    database = Database(database_url)
    yield database
    database.dispose()


def test_device_name_and_ae_title_taken(db: Database) -> None:
    with db.session() as session:
        assert not device_name_taken(session, "ward-dr")
        assert not ae_title_taken(session, "WARD_DR")
    with db.session(write=True) as session:
        created = queries.create_device(session, "ward-dr", "modality", ae_title="WARD_DR")
        queries.create_device(session, "oximeter-bed-4", "sensor")
    with db.session() as session:
        assert device_name_taken(session, "ward-dr")
        assert device_name_taken(session, "oximeter-bed-4")
        # Exact names: neither a prefix nor another case is the same device.
        assert not device_name_taken(session, "ward")
        assert not device_name_taken(session, "WARD-DR")
        # AE titles as the receiver matches them: surrounding spaces ignored.
        assert ae_title_taken(session, "WARD_DR")
        assert ae_title_taken(session, " WARD_DR  ")
        assert not ae_title_taken(session, "WARD_CT")
    # A deactivated device still holds its name and AE title.
    with db.session(write=True) as session:
        device = queries.device_by_id(session, created.device_id)
        assert device is not None
        device.active = False
    with db.session() as session:
        assert device_name_taken(session, "ward-dr") and ae_title_taken(session, "WARD_DR")


def test_ping_answers_while_the_database_does_and_raises_when_it_cannot(db: Database, tmp_path: Path) -> None:
    with db.session() as session:
        assert ping(session) is None
    # A database that cannot be opened (its directory does not exist): the driver's error comes out.
    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'covidet.db'}")
    try:
        with sessionmaker(engine)() as session, pytest.raises(OperationalError, match="unable to open"):
            ping(session)
    finally:
        engine.dispose()

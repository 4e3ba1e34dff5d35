"""Persistence: SQLAlchemy models, the database handle, query functions and Alembic migrations."""

from covidet.store.db import Database, init_db, make_engine
from covidet.store.models import (
    Base,
    Device,
    DeviceKind,
    Image,
    ImageStatus,
    Patient,
    RejectedMessage,
    Study,
    VitalSignRecord,
)

__all__ = [
    "Base",
    "Database",
    "Device",
    "DeviceKind",
    "Image",
    "ImageStatus",
    "Patient",
    "RejectedMessage",
    "Study",
    "VitalSignRecord",
    "init_db",
    "make_engine",
]

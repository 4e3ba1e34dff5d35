"""SQLAlchemy 2 models of covidet's database (SQLite by default, PostgreSQL at scale).

The tables are defined in :mod:`.base`, :mod:`.clinical` and :mod:`.accounts`; this package exports
them all (import them from here). Schema changes go through Alembic (``covidet/store/migrations``);
:func:`covidet.store.db.init_db` upgrades a database to the latest revision. Times are timezone-aware UTC.
"""

from covidet.store.models.accounts import (
    ApiToken,
    AuditEvent,
    Review,
    ReviewAction,
    ReviewFinding,
    ReviewStatus,
    Role,
    StudyClaim,
    User,
    WebSession,
)
from covidet.store.models.base import Base, utcnow
from covidet.store.models.clinical import (
    Alert,
    Device,
    DeviceKind,
    DicomObject,
    DicomObjectKind,
    FindingRecord,
    Image,
    ImageStatus,
    Inference,
    InferenceStatus,
    Patient,
    RejectedMessage,
    Study,
    TriageRecord,
    VitalSignRecord,
)

__all__ = [
    "Alert",
    "ApiToken",
    "AuditEvent",
    "Base",
    "Device",
    "DeviceKind",
    "DicomObject",
    "DicomObjectKind",
    "FindingRecord",
    "Image",
    "ImageStatus",
    "Inference",
    "InferenceStatus",
    "Patient",
    "RejectedMessage",
    "Review",
    "ReviewAction",
    "ReviewFinding",
    "ReviewStatus",
    "Role",
    "Study",
    "StudyClaim",
    "TriageRecord",
    "User",
    "VitalSignRecord",
    "WebSession",
    "utcnow",
]

"""Who and what ``covidet demo`` registers: two users and two devices.

:func:`register_demo` creates (or, in a kept ``--home``, resets) the users ``demo-admin`` (admin) and
``demo-radiologist`` (radiologist) with this run's passwords, registers the simulator's modality (calling
AE title ``COVIDET-SIM``) once, and a new bedside sensor at every run (a sensor's MQTT password is
shown once and only its hash kept). Each user change is audited. The browser tests start their
deployment with it too.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when the demo runs (the store pulls in SQLAlchemy and the models)
    from sqlalchemy.orm import Session

    from covidet.store import Database

__all__ = [
    "DEMO_ADMIN",
    "DEMO_MODALITY",
    "DEMO_MODALITY_AE",
    "DEMO_RADIOLOGIST",
    "DEMO_SENSOR",
    "DemoAccounts",
    "register_demo",
]

DEMO_ADMIN = "demo-admin"
DEMO_RADIOLOGIST = "demo-radiologist"
#: The simulator's calling AE title (``covidet simulate --calling-ae``), registered as the modality.
DEMO_MODALITY_AE = "COVIDET-SIM"
DEMO_MODALITY = "demo-modality"
DEMO_SENSOR = "demo-bedside-monitor"


@dataclass(frozen=True)
class DemoAccounts:
    """Who and what the demo registered: the two users' passwords, and the devices' credentials."""

    admin: str
    admin_password: str
    radiologist: str
    radiologist_password: str
    modality_ae: str
    sensor_device_id: int
    sensor_username: str | None
    sensor_password: str | None


def _set_user(session: Session, username: str, role: str, password: str) -> None:
    from covidet.api.auth import hash_password
    from covidet.store import review_queries as rq

    user = rq.user_by_username(session, username)
    if user is None:
        user = rq.create_user(session, username, password_hash=hash_password(password), role=role)
        action = "user.create"
    else:  # a kept --home: the demo's users get this run's passwords
        rq.update_user(session, user.id, active=True, role=role, password_hash=hash_password(password))
        action = "user.update"
    rq.add_audit_event(
        session, action, object_type="user", object_id=user.id, details={"username": username, "via": "demo"}
    )


def register_demo(
    db: Database,
    *,
    admin: str = DEMO_ADMIN,
    radiologist: str = DEMO_RADIOLOGIST,
    admin_password: str | None = None,
    radiologist_password: str | None = None,
    modality_ae: str = DEMO_MODALITY_AE,
) -> DemoAccounts:
    """Create (or, in a kept folder, reset) the demo's users and register its modality and a new
    sensor. Passwords default to random ones (shown once, by the caller)."""
    from covidet.store import queries

    admin_password = admin_password or secrets.token_urlsafe(12)
    radiologist_password = radiologist_password or secrets.token_urlsafe(12)
    with db.session(write=True) as session:
        _set_user(session, admin, "admin", admin_password)
        _set_user(session, radiologist, "radiologist", radiologist_password)
        if not any(d.ae_title == modality_ae for d in queries.list_devices(session)):
            queries.create_device(session, DEMO_MODALITY, "modality", ae_title=modality_ae)
        # A sensor's MQTT password is shown once and only its hash kept, so each run registers its
        # own sensor (in a kept folder, earlier ones stay in the device table).
        taken = {d.name for d in queries.list_devices(session)}
        name = DEMO_SENSOR
        suffix = 1
        while name in taken:
            suffix += 1
            name = f"{DEMO_SENSOR}-{suffix}"
        sensor = queries.create_device(session, name, "sensor")
    return DemoAccounts(
        admin=admin,
        admin_password=admin_password,
        radiologist=radiologist,
        radiologist_password=radiologist_password,
        modality_ae=modality_ae,
        sensor_device_id=sensor.device_id,
        sensor_username=sensor.mqtt_username,
        sensor_password=sensor.mqtt_password,
    )

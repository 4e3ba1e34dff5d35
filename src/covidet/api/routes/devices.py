"""``/api/v1/devices`` (admin): register devices and list them.

A new device's secrets (API key, and MQTT password for sensors) are in the creation answer only; the
store keeps hashes. Registration is audited (``device.create``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.exc import IntegrityError

from covidet.api.auth import AdminUser, audit_in
from covidet.api.deps import DatabaseDep
from covidet.api.schemas import AUTH_ERRORS, NO_CONTROL_PATTERN, UNSAFE_ERRORS, error_responses
from covidet.store import device_queries, queries
from covidet.store.models import Device, DeviceKind

__all__ = ["DeviceCreate", "DeviceCreatedPublic", "DevicePublic", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/devices", tags=["devices"])


class DeviceCreate(BaseModel):
    """A device to register. ``ae_title`` is for modalities (default: the name, upper-cased, cut to 16)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=NO_CONTROL_PATTERN)]
    kind: DeviceKind
    ae_title: (
        Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=r"^[ -\[\]-~]+$")] | None
    ) = Field(None, description="DICOM calling AE title: 1-16 printable ASCII characters, no backslash")


class DevicePublic(BaseModel):
    id: int
    name: str
    kind: str
    ae_title: str | None
    mqtt_username: str | None
    active: bool
    created_at: datetime


class DeviceCreatedPublic(BaseModel):
    """The new device and its secrets, shown this once."""

    device: DevicePublic
    api_key: str | None
    mqtt_username: str | None
    mqtt_password: str | None
    vitals_topic: str | None


def _public(device: Device) -> DevicePublic:
    return DevicePublic(
        id=device.id,
        name=device.name,
        kind=device.kind,
        ae_title=device.ae_title,
        mqtt_username=device.mqtt_username,
        active=device.active,
        created_at=device.created_at,
    )


@router.get("", response_model=list[DevicePublic], responses=AUTH_ERRORS)
def list_devices(user: AdminUser, db: DatabaseDep) -> list[DevicePublic]:
    """Every registered device (no secrets)."""
    with db.session() as session:
        return [_public(d) for d in queries.list_devices(session)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DeviceCreatedPublic,
    responses=UNSAFE_ERRORS | error_responses(409),
)
def create_device(
    request: Request, body: DeviceCreate, user: AdminUser, db: DatabaseDep
) -> DeviceCreatedPublic:
    """Register a device; 409 when its name or AE title is taken."""
    try:
        with db.session(write=True) as session:
            if device_queries.device_name_taken(session, body.name):
                raise HTTPException(
                    status.HTTP_409_CONFLICT, detail=f"a device named {body.name!r} already exists"
                )
            if body.ae_title is not None and device_queries.ae_title_taken(session, body.ae_title):
                raise HTTPException(
                    status.HTTP_409_CONFLICT, detail=f"AE title {body.ae_title!r} is already registered"
                )
            try:
                credentials = queries.create_device(session, body.name, body.kind, ae_title=body.ae_title)
            except ValueError as exc:
                # The derived AE title of a modality may collide, or be empty for an all-symbol name.
                code = (
                    status.HTTP_409_CONFLICT
                    if "already" in str(exc)
                    else status.HTTP_422_UNPROCESSABLE_CONTENT
                )
                raise HTTPException(code, detail=str(exc)) from None
            device = queries.device_by_id(session, credentials.device_id)
            assert device is not None
            audit_in(
                session,
                request,
                "device.create",
                user=user,
                object_type="device",
                object_id=device.id,
                details={"name": device.name, "kind": device.kind},
            )
            answer = DeviceCreatedPublic(
                device=_public(device),
                api_key=credentials.api_key,
                mqtt_username=credentials.mqtt_username,
                mqtt_password=credentials.mqtt_password,
                vitals_topic=credentials.vitals_topic,
            )
    except IntegrityError:  # registered concurrently under the same name
        raise HTTPException(status.HTTP_409_CONFLICT, detail="the name or AE title was just taken") from None
    logger.info("device %r (%s) registered by %s", body.name, body.kind, user.username)
    return answer

"""``/api/v1/alerts``: urgent results waiting for a person, and their acknowledgement.

Listing is a read of patient data (``read.alerts``); acknowledging is audited
(``alert.acknowledge``) in the same transaction.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from covidet.api.auth import RadiologistUser, audit_in, record_audit
from covidet.api.deps import DatabaseDep
from covidet.api.schemas import (
    AUTH_ERRORS,
    UNSAFE_ERRORS,
    IdPath,
    Limit,
    Offset,
    PageMeta,
    PatientRef,
    error_responses,
)
from covidet.store import review_queries as rq
from covidet.store.models import Alert, Patient

__all__ = ["AlertPublic", "AlertsPublic", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/alerts", tags=["alerts"])


class AlertPublic(BaseModel):
    id: int
    image_id: int
    patient: PatientRef
    priority: str
    reasons: list[str]
    created_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None


class AlertsPublic(PageMeta):
    items: list[AlertPublic]


def alert_public(alert: Alert, patient: Patient) -> AlertPublic:
    return AlertPublic(
        id=alert.id,
        image_id=alert.image_id,
        patient=PatientRef.of(patient),
        priority=alert.priority,
        reasons=list(alert.reasons or []),
        created_at=alert.created_at,
        acknowledged_at=alert.acknowledged_at,
        acknowledged_by=alert.acknowledged_by,
    )


@router.get("", response_model=AlertsPublic, responses=AUTH_ERRORS)
def list_alerts(
    request: Request,
    user: RadiologistUser,
    db: DatabaseDep,
    acknowledged: Annotated[bool | None, Query(description="false: only those waiting")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> AlertsPublic:
    """Alerts, newest first."""
    with db.session() as session:
        rows, total = rq.list_alerts(session, acknowledged=acknowledged, limit=limit, offset=offset)
        items = [alert_public(a, p) for a, p in rows]
    record_audit(
        db,
        request,
        "read.alerts",
        user=user,
        details={"alert_ids": [a.id for a in items], "acknowledged": acknowledged, "total": total},
    )
    return AlertsPublic(items=items, total=total, limit=limit, offset=offset)


@router.post(
    "/{alert_id}/acknowledge", response_model=AlertPublic, responses=UNSAFE_ERRORS | error_responses(404)
)
def acknowledge(request: Request, alert_id: IdPath, user: RadiologistUser, db: DatabaseDep) -> AlertPublic:
    """Acknowledge an alert (idempotent: the first acknowledgement is kept)."""
    with db.session(write=True) as session:
        alert, patient = rq.acknowledge_alert(session, alert_id, username=user.username)
        audit_in(
            session,
            request,
            "alert.acknowledge",
            user=user,
            object_type="alert",
            object_id=alert_id,
            details={"image_id": alert.image_id, "acknowledged_by": alert.acknowledged_by},
        )
        return alert_public(alert, patient)

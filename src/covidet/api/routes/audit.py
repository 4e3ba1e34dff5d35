"""``GET /api/v1/audit`` (admin): the audit log, newest first, with filters.

Events are written for every read of patient data (``read.*``), every review action (``review.*``),
logins (``auth.login``, ``auth.login_failed``, ``auth.token``, ``auth.logout``), tokens
(``token.*``), users (``user.*``), devices (``device.create``), alerts (``alert.acknowledge``) and
exports (``export.training_manifest``). Reading the log is itself audited (``read.audit``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from covidet.api.auth import AdminUser, record_audit
from covidet.api.deps import DatabaseDep
from covidet.api.schemas import (
    AUTH_ERRORS,
    NO_CONTROL_PATTERN,
    IsoDateTime,
    Limit,
    Offset,
    PageMeta,
    as_utc,
)
from covidet.store import review_queries as rq

__all__ = ["AuditEventPublic", "AuditEventsPublic", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/audit", tags=["audit"])

Filter = Annotated[str | None, Query(min_length=1, max_length=64, pattern=NO_CONTROL_PATTERN)]


class AuditEventPublic(BaseModel):
    id: int
    at: datetime
    actor_user_id: int | None
    actor_username: str | None
    actor_device_id: int | None
    action: str
    object_type: str | None
    object_id: str | None
    ip: str | None
    details: dict[str, object] | None


class AuditEventsPublic(PageMeta):
    items: list[AuditEventPublic]


@router.get("", response_model=AuditEventsPublic, responses=AUTH_ERRORS)
def list_audit(
    request: Request,
    user: AdminUser,
    db: DatabaseDep,
    actor: Annotated[Filter, Query(description="username (case-insensitive)")] = None,
    action: Annotated[Filter, Query(description="exact, or a prefix ending in '.' (read.)")] = None,
    object_type: Filter = None,
    object_id: Filter = None,
    since: IsoDateTime | None = None,
    until: IsoDateTime | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> AuditEventsPublic:
    """Audit events, newest first."""
    start, end = as_utc(since, "since"), as_utc(until, "until")
    with db.session() as session:
        rows, total = rq.list_audit_events(
            session,
            actor=actor,
            action=action,
            object_type=object_type,
            object_id=object_id,
            since=start,
            until=end,
            limit=limit,
            offset=offset,
        )
        items = [
            AuditEventPublic(
                id=e.id,
                at=e.at,
                actor_user_id=e.actor_user_id,
                actor_username=e.actor_username,
                actor_device_id=e.actor_device_id,
                action=e.action,
                object_type=e.object_type,
                object_id=e.object_id,
                ip=e.ip,
                details=e.details,
            )
            for e in rows
        ]
    record_audit(
        db, request, "read.audit", user=user, details={"total": total, "action": action, "actor": actor}
    )
    return AuditEventsPublic(items=items, total=total, limit=limit, offset=offset)

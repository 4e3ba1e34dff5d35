"""The audit log: appending events and listing them.

Functions take a session and never commit; see :mod:`covidet.store.review_queries`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from covidet.store.models import (
    AuditEvent,
    utcnow,
)
from covidet.store.query_common import _page

__all__ = [
    "add_audit_event",
    "list_audit_events",
]

# -------------------------------------------------------------------------------------------- audit


def add_audit_event(
    session: Session,
    action: str,
    *,
    actor_user_id: int | None = None,
    actor_username: str | None = None,
    actor_device_id: int | None = None,
    object_type: str | None = None,
    object_id: str | int | None = None,
    ip: str | None = None,
    details: dict[str, object] | None = None,
    at: datetime | None = None,
) -> AuditEvent:
    """Append one event to the audit log (``details`` must be JSON-serialisable)."""
    event = AuditEvent(
        at=at or utcnow(),
        actor_user_id=actor_user_id,
        actor_username=actor_username[:64] if actor_username else None,
        actor_device_id=actor_device_id,
        action=action[:64],
        object_type=object_type,
        object_id=str(object_id) if object_id is not None else None,
        ip=ip[:64] if ip else None,
        details=details,
    )
    session.add(event)
    return event


def list_audit_events(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[AuditEvent], int]:
    """Audit events, newest first. ``actor`` is a username (exact, case-insensitive); ``action`` is
    exact, or a prefix when it ends with ``.`` (``read.`` lists every read)."""
    statement = select(AuditEvent)
    if actor:
        statement = statement.where(func.lower(AuditEvent.actor_username) == actor.lower())
    if action:
        if action.endswith("."):
            statement = statement.where(AuditEvent.action.startswith(action, autoescape=True))
        else:
            statement = statement.where(AuditEvent.action == action)
    if object_type:
        statement = statement.where(AuditEvent.object_type == object_type)
    if object_id:
        statement = statement.where(AuditEvent.object_id == object_id)
    if since is not None:
        statement = statement.where(AuditEvent.at >= since)
    if until is not None:
        statement = statement.where(AuditEvent.at <= until)
    return _page(session, statement.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()), limit, offset)

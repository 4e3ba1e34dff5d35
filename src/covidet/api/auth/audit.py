"""Audit events of a request: who, from where, what.

Contract: :func:`audit_in` adds the event to the caller's session, so it commits, or not, with the
change it records (reviews, user changes); :func:`record_audit` (:mod:`covidet.api.audit_writer`)
commits a read's event on its own before the data is served.
"""

from __future__ import annotations

import logging

from fastapi import Request
from sqlalchemy.orm import Session

from covidet.api.audit_writer import AuditDetails, record_audit
from covidet.api.auth.current_user import AuthenticatedUser
from covidet.api.deps import client_label
from covidet.store import review_queries as rq

__all__ = ["audit_in", "client_ip", "record_audit"]

logger = logging.getLogger(__name__)


def client_ip(request: Request) -> str | None:
    """The client's address as the server sees it (the proxy's, unless uvicorn trusts its headers)."""
    return request.client.host if request.client else None


def audit_in(
    session: Session,
    request: Request,
    action: str,
    *,
    user: AuthenticatedUser | None = None,
    username: str | None = None,
    object_type: str | None = None,
    object_id: str | int | None = None,
    details: AuditDetails | None = None,
) -> None:
    """Add an audit event for this request to ``session``: the event commits, or not, with the change
    it records (reviews, user changes)."""
    rq.add_audit_event(
        session,
        action,
        actor_user_id=user.id if user else None,
        actor_username=user.username if user else username,
        object_type=object_type,
        object_id=object_id,
        ip=client_ip(request),
        details=details,
    )
    logger.debug(
        "audit %s %s %s by %s (%s)",
        action,
        object_type,
        object_id,
        user.username if user else username,
        client_label(request),
    )

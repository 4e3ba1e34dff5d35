"""The audit log page: ``GET /admin/audit`` (admins only), newest first, 50 events a page.

Contract: filters ``actor``, ``action``, ``object_type``, ``object_id`` come from the query string
(at most 64 characters, no control characters; others are ignored) and go to
:func:`covidet.store.review_queries.list_audit_events`; reading the page is itself audited as
``read.audit`` with ``"via": "web"``, the filters and the total.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TypedDict
from urllib.parse import urlencode

from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from covidet.api.auth import record_audit
from covidet.store import review_queries as rq
from covidet.store.db import Database
from covidet.web.access import NO_CONTROL, database, guard
from covidet.web.rendering import render

__all__ = ["FILTERS", "AuditRow", "audit_page"]

_PAGE_SIZE = 50
#: The query parameters that filter the log (keyword arguments of ``list_audit_events``).
FILTERS = ("actor", "action", "object_type", "object_id")


class AuditRow(TypedDict):
    """One audit event as the page lists it."""

    id: int
    at: datetime
    actor: str
    action: str
    object: str
    ip: str
    details: str


def _audit_view(db: Database, params: dict[str, str], offset: int) -> tuple[list[AuditRow], int]:
    with db.session() as session:
        events, total = rq.list_audit_events(
            session,
            actor=params.get("actor"),
            action=params.get("action"),
            object_type=params.get("object_type"),
            object_id=params.get("object_id"),
            limit=_PAGE_SIZE,
            offset=offset,
        )
        rows: list[AuditRow] = [
            {
                "id": e.id,
                "at": e.at,
                "actor": e.actor_username or (f"device {e.actor_device_id}" if e.actor_device_id else "–"),
                "action": e.action,
                "object": f"{e.object_type} {e.object_id}" if e.object_type else (e.object_id or ""),
                "ip": e.ip or "",
                "details": json.dumps(e.details, sort_keys=True, default=str) if e.details else "",
            }
            for e in events
        ]
    return rows, total


def _filters(request: Request) -> dict[str, str]:
    """The filters of the query string (in :data:`FILTERS` order), each cut to 64 characters."""
    params: dict[str, str] = {}
    for name in FILTERS:
        value = (request.query_params.get(name) or "").strip()[:64]
        if value and NO_CONTROL.match(value):
            params[name] = value
    return params


async def audit_page(request: Request) -> Response:
    """The audit log, newest first (admins only)."""
    allowed = await guard(request, admin=True)
    if isinstance(allowed, Response):
        return allowed
    user = allowed
    params = _filters(request)
    try:
        offset = max(0, min(int(request.query_params.get("offset", "0")), 1_000_000))
    except ValueError:
        offset = 0
    db = database(request)
    rows, total = await run_in_threadpool(_audit_view, db, params, offset)
    await run_in_threadpool(
        record_audit, db, request, "read.audit", user=user, details={"via": "web", "total": total, **params}
    )

    def page_query(new_offset: int) -> str:
        return urlencode({**params, **({"offset": str(new_offset)} if new_offset else {})})

    return render(
        request,
        "audit.html",
        {
            "rows": rows,
            "total": total,
            "offset": offset,
            "page_size": _PAGE_SIZE,
            "params": params,
            "prev_query": page_query(max(0, offset - _PAGE_SIZE)) if offset > 0 else None,
            "next_query": page_query(offset + _PAGE_SIZE) if offset + _PAGE_SIZE < total else None,
        },
        user=user,
    )

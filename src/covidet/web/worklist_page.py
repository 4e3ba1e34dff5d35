"""The worklist page, by patient and study: one row per study, claims ("being read by") and "next case".
Its filters and sort are :class:`covidet.web.worklist_filters.StudyFilters`.

Rows come from :func:`covidet.store.reading_room.study_worklist` through the API's presenter
(:func:`covidet.api.reading_room.study_public`), so the page and ``GET /api/v1/worklist/studies`` show
the same thing. Reads are audited as the API's (``read.worklist`` with ``"via": "web"``); claims as
``study.claim`` / ``study.release``.

Forms, not scripts, claim, release and take the next case (they work without JavaScript and from the
keyboard); they post the session's CSRF token, which :func:`covidet.api.auth.get_current_user` checks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, TypedDict
from urllib.parse import quote, unquote

from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from covidet.api import reading_room
from covidet.api.auth import AuthenticatedUser, record_audit
from covidet.api.reading_room import AI_SCORE_NAME, StudyPublic, ai_score_help, study_public
from covidet.store import reading_room as rr
from covidet.store import review_queries as rq
from covidet.store.db import Database
from covidet.web.access import NO_CONTROL, database, guard, safe_next, set_form_cookie
from covidet.web.rendering import render, templates
from covidet.web.worklist_filters import PRIORITIES, SORTABLE, STATUSES, StudyFilters

if TYPE_CHECKING:
    from covidet.ingest.storage import ImageStore

__all__ = ["NOTICE_COOKIE", "StudyFilters", "worklist_routes"]

logger = logging.getLogger(__name__)

#: A one-line message for the next worklist page (a refused claim...), set by the form posts. A
#: cookie rather than the address, so that no link can make the page say something.
NOTICE_COOKIE = "covidet_notice"
#: Alerts listed in the strip (the strip says how many there are in all).
_ALERTS_SHOWN = 20


def _duration(seconds: int | float | None) -> str:
    """A waiting time as people say it: ``45 s``, ``12 min``, ``3 h 05 min``, ``2 d 4 h``."""
    if seconds is None:
        return "–"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


templates.env.filters["duration"] = _duration


class AlertRow(TypedDict):
    """An unacknowledged alert in the worklist's strip."""

    id: int
    image_id: int
    priority: str
    reasons: list[str]
    created_at: datetime
    patient_key: str
    patient_name: str | None


def _view(
    db: Database, filters: StudyFilters, store: ImageStore | None
) -> tuple[list[StudyPublic], int, list[AlertRow], int]:
    with db.session() as session:
        rows, total = rr.study_worklist(
            session,
            priorities=list(filters.priority) or None,
            statuses=list(filters.status) or None,
            reviewed=filters.reviewed,
            patient=filters.patient,
            text=filters.q,
            sort=filters.sort,
            descending=filters.order == "desc",
            limit=filters.limit,
            offset=filters.offset,
        )
        alerts, alert_total = rq.list_alerts(session, acknowledged=False, limit=_ALERTS_SHOWN)
        alert_rows: list[AlertRow] = [
            {
                "id": alert.id,
                "image_id": alert.image_id,
                "priority": alert.priority,
                "reasons": list(alert.reasons or []),
                "created_at": alert.created_at,
                "patient_key": patient.patient_key,
                "patient_name": patient.name,
            }
            for alert, patient in alerts
        ]
    return [study_public(row, store=store) for row in rows], total, alert_rows, alert_total


async def _worklist(request: Request, template: str) -> Response:
    allowed = await guard(request)
    if isinstance(allowed, Response):
        return allowed
    user = allowed
    filters = StudyFilters.from_query(request.query_params)
    db = database(request)
    store = request.app.state.ingest.store if getattr(request.app.state, "ingest", None) else None
    items, total, alerts, alert_total = await run_in_threadpool(_view, db, filters, store)
    await run_in_threadpool(
        record_audit,
        db,
        request,
        "read.worklist",
        user=user,
        details={
            "via": "web",
            "by": "study",
            "study_ids": [item.study_id for item in items],
            "image_ids": [i.image_id for item in items for i in item.images],
            "alert_ids": [alert["id"] for alert in alerts],
            "filters": filters.audit(),
            "total": total,
        },
    )
    response = render(
        request,
        template,
        {
            "items": items,
            "total": total,
            "alerts": alerts,
            "alert_total": alert_total,
            "filters": filters,
            "priorities": PRIORITIES,
            "statuses": STATUSES,
            "sortable": SORTABLE,
            "page_size": filters.limit,
            "notice": _notice(request) if template == "worklist.html" else "",
            "score_name": AI_SCORE_NAME,
            "score_help": ai_score_help,
        },
        user=user,
    )
    if template == "worklist.html" and NOTICE_COOKIE in request.cookies:
        response.delete_cookie(NOTICE_COOKIE, path="/worklist")  # shown once
    return response


async def worklist_page(request: Request) -> Response:
    """The worklist by study: most urgent first, then longest waiting; sort, filters, live updates."""
    return await _worklist(request, "worklist.html")


async def worklist_live(request: Request) -> Response:
    """The live part of the worklist (alerts strip and table) alone: what the page's script swaps in
    when an event arrives, so that rows are rendered by one template only."""
    return await _worklist(request, "_worklist_live.html")


# ----------------------------------------------------------------------------------- claims, next


async def _form_user(request: Request) -> AuthenticatedUser | Response:
    """The radiologist posting a worklist form (CSRF-checked), or the response to send instead."""
    return await guard(request)


def _notice(request: Request) -> str:
    text = unquote(request.cookies.get(NOTICE_COOKIE, ""))[:300]
    return text if NO_CONTROL.match(text) else ""


def _back(request: Request, form: FormData, notice: str | None = None) -> Response:
    """Back to the worklist the form was sent from (its filters), with a one-line notice."""
    target = safe_next(str(form.get("back") or "") or None)
    if not target.startswith("/worklist"):
        target = "/worklist"
    response = RedirectResponse(target, status_code=303)
    if notice:
        set_form_cookie(
            response, request, NOTICE_COOKIE, quote(notice[:300], safe=""), max_age=60, path="/worklist"
        )
    return response


def _study_id(request: Request) -> int | None:
    study_id = int(request.path_params["study_id"])
    return study_id if 0 < study_id < 2**31 else None


#: :func:`covidet.api.reading_room.claim` or ``release``: ``(db, request, user, study_id, via)``.
ClaimAction = Callable[[Database, Request, AuthenticatedUser, int, str], object]


def _attempt(
    action: ClaimAction, db: Database, request: Request, user: AuthenticatedUser, study_id: int
) -> str | None:
    """Run a claim action; the store's refusal (someone else reads it...) as the notice to show."""
    try:
        action(db, request, user, study_id, "web")
    except rq.QueryError as exc:
        return str(exc)
    return None


async def _claim_form(request: Request, action: ClaimAction) -> Response:
    """A claim form post (``action``: :func:`covidet.api.reading_room.claim` or ``release``), then back
    to the worklist, with the refusal as its notice."""
    allowed = await _form_user(request)
    if isinstance(allowed, Response):
        return allowed
    form = await request.form(max_files=0, max_fields=4, max_part_size=2048)
    study_id = _study_id(request)
    if study_id is None:
        return _back(request, form, "No such study.")
    error = await run_in_threadpool(_attempt, action, database(request), request, allowed, study_id)
    return _back(request, form, error)


async def claim(request: Request) -> Response:
    """Claim a study (form post): others see it is being read by you."""
    return await _claim_form(request, reading_room.claim)


async def release(request: Request) -> Response:
    """Release a study's claim (form post): your own, or anyone's as an admin."""
    return await _claim_form(request, reading_room.release)


def _next(db: Database, request: Request, user: AuthenticatedUser) -> int | None:
    row = reading_room.take_next(db, request, user, via="web")
    return None if row is None else (row.unread_images or [row.deciding_image_id])[0]


async def next_case(request: Request) -> Response:
    """Claim the next study to read (most urgent, then longest waiting, not read by someone else) and
    open its first unread image; back to the worklist when nothing is left."""
    allowed = await _form_user(request)
    if isinstance(allowed, Response):
        return allowed
    form = await request.form(max_files=0, max_fields=4, max_part_size=2048)
    image_id = await run_in_threadpool(_next, database(request), request, allowed)
    if image_id is None:
        return _back(request, form, "Nothing left to read: every study has a signed review or is being read.")
    return RedirectResponse(f"/images/{image_id}", status_code=303)


def worklist_routes() -> list[Route]:
    """The worklist's routes (HTML and form posts; not in the OpenAPI document)."""
    table = (
        ("/worklist", worklist_page, ["GET"], "web_worklist"),
        ("/worklist/live", worklist_live, ["GET"], "web_worklist_live"),
        ("/worklist/next", next_case, ["POST"], "web_worklist_next"),
        ("/worklist/studies/{study_id:int}/claim", claim, ["POST"], "web_study_claim"),
        ("/worklist/studies/{study_id:int}/release", release, ["POST"], "web_study_release"),
    )
    return [
        Route(path, endpoint, methods=methods, name=name, include_in_schema=False)
        for path, endpoint, methods, name in table
    ]

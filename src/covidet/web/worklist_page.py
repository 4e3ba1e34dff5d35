"""The worklist page, by patient and study: one row per study, claims ("being read by") and "next case".

Rows come from :func:`covidet.store.reading_room.study_worklist` through the API's presenter
(:func:`covidet.api.reading_room.study_public`), so the page and ``GET /api/v1/worklist/studies`` show
the same thing. Reads are audited as the API's (``read.worklist`` with ``"via": "web"``); claims as
``study.claim`` / ``study.release``.

Forms, not scripts, claim, release and take the next case (they work without JavaScript and from the
keyboard); they post the session's CSRF token, which :func:`covidet.api.auth.get_current_user` checks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, unquote, urlencode

from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from covidet.api import reading_room
from covidet.api.auth import AuthenticatedUser, record_audit
from covidet.api.reading_room import AI_SCORE_NAME, StudyPublic, ai_score_help, study_public
from covidet.store import reading_room as rr
from covidet.store import review_queries as rq
from covidet.store.db import Database
from covidet.web.access import NO_CONTROL, database, guard, safe_next
from covidet.web.rendering import render, templates

__all__ = ["NOTICE_COOKIE", "StudyFilters", "worklist_routes"]

logger = logging.getLogger(__name__)

_PAGE_SIZE = 50
_PRIORITIES = ("urgent", "high", "routine", "none")
_STATUSES = ("queued", "analysed", "failed")
#: Column headers that sort, with the sort key each uses.
_SORTABLE = (("priority", "Priority"), ("patient", "Patient"), ("accession", "Study"), ("waiting", "Waiting"))
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


def _text(params: Any, name: str) -> str | None:
    value = (params.get(name) or "").strip()[:64]
    return value if value and NO_CONTROL.match(value) else None


@dataclass(frozen=True)
class StudyFilters:
    """The worklist's filters and sort, from and back to a query string (unknown values are ignored)."""

    priority: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    reviewed: bool | None = None
    patient: str | None = None
    q: str | None = None
    sort: str = "priority"
    order: str = "asc"
    offset: int = 0
    limit: int = _PAGE_SIZE

    @classmethod
    def from_query(cls, params: Any) -> StudyFilters:
        try:
            offset = max(0, min(int(params.get("offset", "0")), 1_000_000))
        except ValueError:
            offset = 0
        sort = params.get("sort", "priority")
        return cls(
            priority=tuple(p for p in params.getlist("priority") if p in _PRIORITIES),
            status=tuple(s for s in params.getlist("status") if s in _STATUSES),
            reviewed={"yes": True, "no": False}.get(params.get("reviewed", "")),
            patient=_text(params, "patient"),
            q=_text(params, "q"),
            sort=sort if sort in rr.SORTS else "priority",
            order="desc" if params.get("order") == "desc" else "asc",
            offset=offset,
        )

    @property
    def active(self) -> bool:
        """Whether any filter (not the sort) is set."""
        return bool(self.priority or self.status or self.reviewed is not None or self.patient or self.q)

    def query(self, **changes: Any) -> str:
        """The query string of these filters with ``changes`` (another offset, another sort)."""
        state = replace(self, **changes)
        pairs: list[tuple[str, str]] = [("priority", p) for p in state.priority]
        pairs += [("status", s) for s in state.status]
        if state.reviewed is not None:
            pairs.append(("reviewed", "yes" if state.reviewed else "no"))
        pairs += [(name, value) for name in ("patient", "q") if (value := getattr(state, name))]
        if state.sort != "priority":
            pairs.append(("sort", state.sort))
        if state.order != "asc":
            pairs.append(("order", state.order))
        if state.offset:
            pairs.append(("offset", str(state.offset)))
        return urlencode(pairs)

    def sort_link(self, key: str) -> str:
        """The query that sorts by ``key`` (ascending; again: the other way), back to the first page."""
        order = "desc" if self.sort == key and self.order == "asc" else "asc"
        return self.query(sort=key, order=order, offset=0)

    def aria_sort(self, key: str) -> str:
        if self.sort != key:
            return "none"
        return "descending" if self.order == "desc" else "ascending"

    def audit(self) -> dict[str, Any]:
        return {
            "priority": list(self.priority),
            "status": list(self.status),
            "reviewed": self.reviewed,
            "patient": self.patient,
            "q": self.q,
            "sort": self.sort,
            "order": self.order,
        }


def _view(
    db: Database, filters: StudyFilters, store: Any
) -> tuple[list[StudyPublic], int, list[dict[str, Any]], int]:
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
        alert_rows = [
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
            "priorities": _PRIORITIES,
            "statuses": _STATUSES,
            "sortable": _SORTABLE,
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


def _back(request: Request, form: Any, notice: str | None = None) -> Response:
    """Back to the worklist the form was sent from (its filters), with a one-line notice."""
    target = safe_next(str(form.get("back") or "") or None)
    if not target.startswith("/worklist"):
        target = "/worklist"
    response = RedirectResponse(target, status_code=303)
    if notice:
        response.set_cookie(
            NOTICE_COOKIE,
            quote(notice[:300], safe=""),
            max_age=60,
            path="/worklist",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
    return response


def _study_id(request: Request) -> int | None:
    study_id = int(request.path_params["study_id"])
    return study_id if 0 < study_id < 2**31 else None


def _attempt(action: Any, *args: Any) -> str | None:
    """Run a claim action; the store's refusal (someone else reads it...) as the notice to show."""
    try:
        action(*args)
    except rq.QueryError as exc:
        return str(exc)
    return None


async def _claim_form(request: Request, action: Any) -> Response:
    """A claim form post (``action``: :func:`covidet.api.reading_room.claim` or ``release``), then back
    to the worklist, with the refusal as its notice."""
    allowed = await _form_user(request)
    if isinstance(allowed, Response):
        return allowed
    form = await request.form(max_files=0, max_fields=4, max_part_size=2048)
    study_id = _study_id(request)
    if study_id is None:
        return _back(request, form, "No such study.")
    error = await run_in_threadpool(_attempt, action, database(request), request, allowed, study_id, "web")
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

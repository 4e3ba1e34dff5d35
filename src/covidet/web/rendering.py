"""How every web page is rendered: the Jinja2 environment (filters, globals), the headers of a page,
and :func:`render`, which adds who is signed in and the session's CSRF token to a template's values.

Contract: every page answers with :data:`PAGE_HEADERS` (a page may override single headers, as the
diagnostic viewer does with its Content-Security-Policy); times are shown in UTC; nothing here reads
the database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
from fastapi.templating import Jinja2Templates
from starlette.requests import Request
from starlette.responses import Response

from covidet import DISCLAIMER, __version__
from covidet.domain import Label
from covidet.web.charts import CHART_HEIGHT, CHART_WIDTH

if TYPE_CHECKING:
    from covidet.api.auth import AuthenticatedUser

__all__ = ["LABELS", "PAGE_HEADERS", "STATIC_DIR", "TEMPLATES_DIR", "iso", "render", "templates"]

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
#: Headers of every page: nothing but this origin's scripts, styles and images; never framed; never
#: kept by a cache (pages show patient data).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
#: The finding labels a reviewer may choose, in the model's order.
LABELS = [label.value for label in Label]


def _when(moment: datetime | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS UTC`` (covidet keeps UTC everywhere)."""
    if moment is None:
        return "–"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(moment: datetime | None) -> str:
    """A time as ISO 8601 in UTC (naive times are taken as UTC); ``""`` for ``None``."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def _score(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def _person(name: str | None) -> str:
    """A DICOM person name (``Family^Given^Middle``) as people write it."""
    return " ".join(part for part in (name or "").split("^") if part)


def _number(value: object) -> str:
    """A model-card number, rounded for people (integers stay integers)."""
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _score(value, 3)
    return str(value)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(("html",), default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, iso=iso, score=_score, number=_number, person=_person)
    env.globals.update(
        DISCLAIMER=DISCLAIMER,
        VERSION=__version__,
        LABELS=LABELS,
        CHART_WIDTH=CHART_WIDTH,
        CHART_HEIGHT=CHART_HEIGHT,
    )
    return env


#: The pages' templates (``templates/``); pages may add filters of their own to ``templates.env``.
templates = Jinja2Templates(env=_environment())


def render(
    request: Request,
    name: str,
    context: Mapping[str, object],
    *,
    user: AuthenticatedUser | None,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The template ``name`` with ``context`` plus ``user``, ``csrf_token`` (the session's, for forms
    and scripts; ``""`` for a bearer token or nobody) and ``path``, with :data:`PAGE_HEADERS` updated
    by ``headers``."""
    base: dict[str, object] = {
        "user": user,
        # The session's CSRF token: JavaScript sends it in X-CSRF-Token, forms in a hidden field.
        "csrf_token": user.csrf_token if user is not None and user.via == "session" else "",
        "path": request.url.path,
    }
    return templates.TemplateResponse(
        request,
        name,
        base | dict(context),
        status_code=status_code,
        headers=PAGE_HEADERS | dict(headers or {}),
    )

"""The radiologists' web pages: sign-in, worklist, viewer with review, model card, audit log.

Pages are rendered on the server with Jinja2; a little plain JavaScript (``static/``) adds the live
worklist, the image canvas and the review actions, which call the JSON API with the session's CSRF
token. The pages are plain Starlette routes, not API operations: they answer HTML, redirect to the
sign-in form instead of answering 401, and stay out of the OpenAPI document.

Data comes from the same query functions as the API (:mod:`covidet.store.review_queries`), and every
page that shows patient data writes the same audit events as the API (``read.worklist``,
``read.image``, ``read.audit``) with ``"via": "web"`` in their details.

Sign-in is a form post to ``/login``. Before a session exists there is no CSRF token to check, so the
form carries a random token that must match a short-lived cookie set with the form (double-submit):
another site cannot sign a browser in to an account of its choosing. ``/logout`` is a form post with
the session's CSRF token (checked by :func:`covidet.api.auth.get_current_user`).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi.concurrency import run_in_threadpool
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

import covidet
from covidet import DISCLAIMER, __version__
from covidet.api.auth import (
    SESSION_COOKIE,
    AuthenticatedUser,
    clear_session_cookie,
    end_session,
    get_optional_user,
    record_audit,
    set_session_cookie,
    start_session,
)
from covidet.api.ratelimit import LoginLocked, throttled_authenticate
from covidet.domain import Label
from covidet.store import review_queries as rq
from covidet.store.db import Database
from covidet.store.models import Inference, Role
from covidet.web.charts import CHART_HEIGHT, CHART_WIDTH, trend_charts
from covidet.web.review_view import reading_room_view

__all__ = [
    "LOGIN_CSRF_COOKIE",
    "PAGE_HEADERS",
    "STATIC_DIR",
    "TEMPLATES_DIR",
    "model_card_path",
    "model_plots_dir",
    "page_routes",
    "templates",
]

logger = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
#: Double-submit cookie of the sign-in form (there is no session, hence no session CSRF token, yet).
LOGIN_CSRF_COOKIE = "covidet_login_csrf"
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
_PAGE_SIZE = 50
_LABELS = [label.value for label in Label]
_PLOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.png$")
#: Captions of the evaluation plots that ``covidet evaluate`` writes.
_PLOT_CAPTIONS = {
    "confusion_matrix.png": "Confusion matrix of the image-level decision",
    "roc.png": "ROC curves, one class against the others",
    "reliability.png": "Reliability diagram: predicted score against observed frequency (calibration)",
}
_NO_CONTROL = re.compile(r"^[^\x00-\x1f\x7f]*$")


# ------------------------------------------------------------------------------------------- Jinja2


def _when(moment: datetime | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS UTC`` (covidet keeps UTC everywhere)."""
    if moment is None:
        return "–"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(moment: datetime | None) -> str:
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


def _number(value: Any) -> str:
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
    env.filters.update(when=_when, iso=_iso, score=_score, number=_number, person=_person)
    env.globals.update(
        DISCLAIMER=DISCLAIMER,
        VERSION=__version__,
        LABELS=_LABELS,
        CHART_WIDTH=CHART_WIDTH,
        CHART_HEIGHT=CHART_HEIGHT,
    )
    return env


templates = Jinja2Templates(env=_environment())


def _render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    user: AuthenticatedUser | None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    base = {
        "user": user,
        # The session's CSRF token: JavaScript sends it in X-CSRF-Token, forms in a hidden field.
        "csrf_token": user.csrf_token if user is not None and user.via == "session" else "",
        "path": request.url.path,
    }
    return templates.TemplateResponse(
        request,
        name,
        base | context,
        status_code=status_code,
        headers=PAGE_HEADERS | (headers or {}),
    )


# ------------------------------------------------------------------------------------ who is asking


def _db(request: Request) -> Database:
    return request.app.state.db


async def _page_user(request: Request) -> AuthenticatedUser | None:
    """The signed-in user (session cookie, or a bearer token for scripts), or ``None``. An unsafe
    request by session without the right CSRF token raises the API's 403."""
    bearer: str | None = None
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            bearer = value.strip()
    return await get_optional_user(request, _db(request), bearer, request.cookies.get(SESSION_COOKIE))


def _safe_next(target: str | None) -> str:
    """``target`` when it is a path of this site, else the worklist (no open redirects)."""
    if (
        target
        and target.startswith("/")
        and not target.startswith(("//", "/\\"))
        and _NO_CONTROL.match(target)
    ):
        return target
    return "/worklist"


def _to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


async def _guard(request: Request, *, admin: bool = False) -> AuthenticatedUser | Response:
    """The user allowed on this page, or the response to send instead: a redirect to the sign-in form
    (not signed in) or a 403 page (wrong role)."""
    user = await _page_user(request)
    if user is None:
        return _to_login(request)
    allowed = {Role.ADMIN.value} if admin else {Role.ADMIN.value, Role.RADIOLOGIST.value}
    if user.role not in allowed:
        logger.warning("page %s refused to %s (%s)", request.url.path, user.username, user.role)
        return _render(
            request,
            "error.html",
            {
                "title": "Not allowed",
                "message": f"This page needs the role {' or '.join(sorted(allowed))}; "
                f"you are signed in as {user.username} ({user.role}).",
            },
            user=user,
            status_code=403,
        )
    return user


def _not_found(request: Request, user: AuthenticatedUser, message: str) -> Response:
    return _render(
        request, "error.html", {"title": "Not found", "message": message}, user=user, status_code=404
    )


# ------------------------------------------------------------------------------------ sign in / out


async def home(request: Request) -> Response:
    return RedirectResponse("/worklist", status_code=303)


def _login_form(
    request: Request, *, error: str | None = None, status_code: int = 200, username: str = ""
) -> Response:
    token = secrets.token_urlsafe(32)
    response = _render(
        request,
        "login.html",
        {
            "login_csrf": token,
            "next": _safe_next(request.query_params.get("next") or None),
            "error": error,
            "username": username,
        },
        user=None,
        status_code=status_code,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=3600,
        path="/login",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


async def login_form(request: Request) -> Response:
    """The sign-in form; a signed-in user goes straight on."""
    if await _page_user(request) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
    return _login_form(request)


async def login_submit(request: Request) -> Response:
    """Check the form's token and the password; start a session and go to ``next``."""
    form = await request.form(max_files=0, max_fields=8, max_part_size=4096)
    username = str(form.get("username") or "")[:64]
    password = str(form.get("password") or "")[:1024]
    sent = str(form.get("csrf_token") or "")
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    target = _safe_next(str(form.get("next") or "") or None)
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        logger.warning(
            "sign-in form without its token from %s", request.client.host if request.client else "?"
        )
        return _login_form(
            request,
            error="The sign-in form expired. Please sign in again.",
            status_code=400,
            username=username,
        )
    db = _db(request)
    try:  # the API's sign-in throttle (covidet.api.ratelimit): 429 while locked
        found = await throttled_authenticate(request, db, username, password)
    except LoginLocked as exc:
        locked = _login_form(
            request,
            error=f"Too many failed sign-ins. Try again in {exc.retry_after} seconds.",
            status_code=429,
            username=username,
        )
        locked.headers["Retry-After"] = str(exc.retry_after)
        return locked
    if found is None:
        tried = username if re.fullmatch(rq.USERNAME_PATTERN, username) else None
        await run_in_threadpool(
            record_audit, db, request, "auth.login_failed", username=tried, details={"path": "/login"}
        )
        return _login_form(
            request, error="Incorrect username or password.", status_code=401, username=username
        )
    user_id, name, _role = found
    settings = request.app.state.settings
    issued = await run_in_threadpool(start_session, db, settings, user_id)
    await run_in_threadpool(
        record_audit,
        db,
        request,
        "auth.login",
        username=name,
        object_type="user",
        object_id=user_id,
        details={"via": "web"},
    )
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, request, issued)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    logger.info("%s signed in (web)", name)
    return response


async def logout(request: Request) -> Response:
    """End the session (form post with the session's CSRF token)."""
    user = await _page_user(request)  # 403 without the CSRF token
    response = RedirectResponse("/login", status_code=303)
    if user is not None:
        db = _db(request)
        await run_in_threadpool(end_session, db, user)
        await run_in_threadpool(
            record_audit, db, request, "auth.logout", user=user, details={"via": user.via, "page": "web"}
        )
        if user.via == "session":
            clear_session_cookie(response, request)
    return response


# ------------------------------------------------------------------------------------------ worklist

# The worklist (by study, with claims and "next case") is in covidet.web.worklist_page.


# -------------------------------------------------------------------------------------------- viewer


def _review_dict(review: Any) -> dict[str, Any]:
    return {
        "id": review.id,
        "status": review.status,
        "reviewer_id": review.reviewer_id,
        "reviewer": review.reviewer.username,
        "label": review.label,
        "comment": review.comment,
        "inference_id": review.inference_id,
        "updated_at": review.updated_at,
        "signed_at": review.signed_at,
        "amends_review_id": review.amends_review_id,
        "findings": [
            {
                "action": f.action,
                "source_finding_id": f.source_finding_id,
                "label": f.label,
                "box": [f.x1, f.y1, f.x2, f.y2] if f.x1 is not None else None,
            }
            for f in review.findings
        ],
    }


def _viewer_view(db: Database, image_id: int, user_id: int) -> dict[str, Any] | None:
    with db.session() as session:
        image = rq.get_image(session, image_id)
        if image is None:
            return None
        patient = image.study.patient
        inference = rq.latest_inference(session, image_id)
        findings = sorted(inference.findings, key=lambda f: -f.score) if inference is not None else []
        triage = rq.latest_triage(session, image_id)
        readings, vitals_total = rq.patient_vitals(session, patient.id, limit=200)
        latest = rq.latest_vitals(session, [patient.id]).get(patient.id, {})
        reviews = [_review_dict(r) for r in rq.image_reviews(session, image_id)]
        failed = session.scalar(
            select(Inference.error)
            .where(Inference.image_id == image_id, Inference.status == "failed")
            .order_by(Inference.id.desc())
            .limit(1)
        )
        return {
            "image": {
                "id": image.id,
                "study_id": image.study_id,
                "study_instance_uid": image.study.study_instance_uid,
                "sop_instance_uid": image.sop_instance_uid,
                "media_type": image.media_type,
                "modality": image.modality,
                "rows": image.rows,
                "columns": image.columns,
                "received_at": image.received_at,
                "status": image.status,
                "priority": image.priority,
            },
            "patient": {"id": patient.id, "key": patient.patient_key, "name": patient.name},
            "ai": {
                "inference_id": inference.id,
                "label": inference.label,
                # The AI score: one number per finding, as the worklist and the triage show it.
                "score": (inference.probabilities or {}).get(inference.label) if inference.label else None,
                "probabilities": sorted(
                    (inference.probabilities or {}).items(), key=lambda item: -float(item[1])
                ),
                "model_name": inference.model_name,
                "model_version": inference.model_version,
                "decision_rule": inference.decision_rule,
                "threshold": inference.threshold,
                "finished_at": inference.finished_at,
            }
            if inference is not None
            else None,
            "failure": failed,
            "findings": [
                {"id": f.id, "label": f.label, "score": f.score, "box": [f.x1, f.y1, f.x2, f.y2]}
                for f in findings
            ],
            "triage": {
                "priority": triage.priority,
                "rule": triage.rule,
                "reasons": list(triage.reasons or []),
                "computed_at": triage.computed_at,
                "news2_partial": triage.news2_partial,
            }
            if triage is not None
            else None,
            "charts": trend_charts(readings, latest),
            "vitals_total": vitals_total,
            "signed": [r for r in reviews if r["status"] == "signed"],
            "draft": next(
                (r for r in reviews if r["status"] == "draft" and r["reviewer_id"] == user_id), None
            ),
            "other_drafts": [r for r in reviews if r["status"] == "draft" and r["reviewer_id"] != user_id],
            **reading_room_view(session, image, reviews, user_id),
        }


async def viewer_page(request: Request) -> Response:
    """One X-ray with the detector's boxes, the triage, the vitals trend and the review form."""
    guard = await _guard(request)
    if isinstance(guard, Response):
        return guard
    user = guard
    image_id = int(request.path_params["image_id"])
    db = _db(request)
    view = await run_in_threadpool(_viewer_view, db, image_id, user.id) if 0 < image_id < 2**31 else None
    if view is None:
        return _not_found(request, user, f"There is no image with id {image_id}.")
    await run_in_threadpool(
        record_audit,
        db,
        request,
        "read.image",
        user=user,
        object_type="image",
        object_id=image_id,
        details={
            "via": "web",
            "patient_id": view["patient"]["id"],
            "inference_id": view["ai"]["inference_id"] if view["ai"] else None,
            "vitals": view["vitals_total"],
            "reviews": [r["id"] for r in view["signed"]],
        },
    )
    ai = view["ai"]
    signed = request.query_params.get("signed", "")
    view["signed_notice"] = next(
        (r for r in view["signed"] if str(r["id"]) == signed and r["reviewer_id"] == user.id), None
    )
    state = {
        "imageId": image_id,
        "userId": user.id,
        "width": view["image"]["columns"],
        "height": view["image"]["rows"],
        "labels": _LABELS,
        "model": {"name": ai["model_name"], "version": ai["model_version"]} if ai else None,
        "aiLabel": ai["label"] if ai else None,
        "findings": view["findings"],
        "draft": _json_ready(view["draft"]),
        "canReview": user.role in (Role.ADMIN.value, Role.RADIOLOGIST.value),
    }
    return _render(
        request,
        "viewer.html",
        view | {"state": state},
        user=user,
    )


def _json_ready(value: Any) -> Any:
    """``value`` with datetimes as ISO strings (for the page's embedded JSON)."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, datetime):
        return _iso(value)
    return value


# ------------------------------------------------------------------------------------------- model


def model_card_path(settings: Any) -> Path | None:
    """The model card of the bundle the worker uses: ``settings.model`` (``COVIDET_MODEL``), else the
    shipped bundle (inside the installed package, or ``models/`` of a source checkout). Looked up here
    rather than with :mod:`covidet.detection.bundle`, which would import torch into the web app."""
    package_dir = Path(covidet.__file__).resolve().parent
    candidates = []
    if getattr(settings, "model", None):
        candidates.append(Path(settings.model).expanduser())
    candidates += [
        package_dir / "_models" / "covidet-detector",
        package_dir.parents[1] / "models" / "covidet-detector",
    ]
    for candidate in candidates:
        if (candidate / "model_card.json").is_file():
            return candidate / "model_card.json"
    return None


def model_plots_dir(card_path: Path | None) -> Path | None:
    """Where the model's evaluation plots are: ``plots/`` in the bundle, else ``docs/model-val`` of a
    source checkout (written by ``covidet evaluate --split val --out docs/model-val``)."""
    package_dir = Path(covidet.__file__).resolve().parent
    candidates = []
    if card_path is not None:
        candidates.append(card_path.parent / "plots")
    candidates.append(package_dir.parents[1] / "docs" / "model-val")
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.png")):
            return candidate
    return None


def _models_in_use(db: Database) -> list[dict[str, Any]]:
    with db.session() as session:
        rows = session.execute(
            select(Inference.model_name, Inference.model_version, func.count(Inference.id))
            .where(Inference.status == "succeeded")
            .group_by(Inference.model_name, Inference.model_version)
            .order_by(Inference.model_name, Inference.model_version)
        ).all()
    return [{"name": name, "version": version, "count": int(count)} for name, version, count in rows]


def _card_sections(card: dict[str, Any]) -> dict[str, Any]:
    """The model card's fields arranged for the page."""
    metrics = card.get("metrics", {}) or {}
    split_name, split = next(iter(metrics.items()), (None, {}))
    image = (split or {}).get("image", {}) or {}
    detection = (split or {}).get("detection", {}) or {}
    training = card.get("training", {}) or {}
    return {
        "split_name": split_name,
        "split": split or {},
        "image": image,
        "per_class": image.get("per_class", {}) or {},
        "detection": detection,
        "detection_per_class": detection.get("per_class", {}) or {},
        "training": training,
        "config": training.get("config", {}) or {},
    }


async def model_page(request: Request) -> Response:
    """The model card of the detector and its evaluation plots."""
    guard = await _guard(request)
    if isinstance(guard, Response):
        return guard
    user = guard
    settings = request.app.state.settings
    card_path = model_card_path(settings)
    card: dict[str, Any] | None = None
    error = None
    if card_path is None:
        error = "No model card found: set COVIDET_MODEL to a model bundle folder."
    else:
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            error = f"The model card {card_path} cannot be read: {exc}"
    plots_dir = model_plots_dir(card_path)
    plots = (
        [
            {"name": p.name, "caption": _PLOT_CAPTIONS.get(p.name, p.stem.replace("_", " ").capitalize())}
            for p in sorted(plots_dir.glob("*.png"))
            if _PLOT_NAME.match(p.name)
        ]
        if plots_dir is not None
        else []
    )
    report = None
    if plots_dir is not None and (plots_dir / "report.json").is_file():
        try:
            report = json.loads((plots_dir / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = None
    in_use = await run_in_threadpool(_models_in_use, _db(request))
    return _render(
        request,
        "model.html",
        {
            "card": card,
            "card_path": card_path,
            "error": error,
            "sections": _card_sections(card) if card else None,
            "plots": plots,
            "report": report,
            "in_use": in_use,
        },
        user=user,
    )


async def model_plot(request: Request) -> Response:
    """One evaluation plot (PNG) of the model page."""
    guard = await _guard(request)
    if isinstance(guard, Response):
        return guard
    name = request.path_params["name"]
    plots_dir = model_plots_dir(model_card_path(request.app.state.settings))
    # The name is matched against a strict pattern and then looked up in the folder's listing: no
    # path from the URL ever reaches the file system.
    if plots_dir is None or not _PLOT_NAME.match(name):
        return _not_found(request, guard, "No such plot.")
    files = {p.name: p for p in plots_dir.glob("*.png")}
    if name not in files:
        return _not_found(request, guard, "No such plot.")
    return FileResponse(
        files[name],
        media_type="image/png",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=300"},
    )


# ------------------------------------------------------------------------------------------- audit


def _audit_view(db: Database, params: dict[str, Any], offset: int) -> tuple[list[dict[str, Any]], int]:
    with db.session() as session:
        events, total = rq.list_audit_events(session, limit=_PAGE_SIZE, offset=offset, **params)
        rows = [
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


async def audit_page(request: Request) -> Response:
    """The audit log, newest first (admins only)."""
    guard = await _guard(request, admin=True)
    if isinstance(guard, Response):
        return guard
    user = guard
    query = request.query_params
    params: dict[str, Any] = {}
    for name in ("actor", "action", "object_type", "object_id"):
        value = (query.get(name) or "").strip()[:64]
        if value and _NO_CONTROL.match(value):
            params[name] = value
    try:
        offset = max(0, min(int(query.get("offset", "0")), 1_000_000))
    except ValueError:
        offset = 0
    db = _db(request)
    rows, total = await run_in_threadpool(_audit_view, db, params, offset)
    await run_in_threadpool(
        record_audit, db, request, "read.audit", user=user, details={"via": "web", "total": total, **params}
    )

    def page_query(new_offset: int) -> str:
        return urlencode({**params, **({"offset": str(new_offset)} if new_offset else {})})

    return _render(
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


# ------------------------------------------------------------------------------------------ routes


def page_routes() -> list[Route]:
    """The web app's routes (HTML; not part of the OpenAPI document)."""
    table: Sequence[tuple[str, Callable[[Request], Any], list[str], str]] = (
        ("/", home, ["GET"], "web_home"),
        ("/login", login_form, ["GET"], "web_login"),
        ("/login", login_submit, ["POST"], "web_login_submit"),
        ("/logout", logout, ["POST"], "web_logout"),
        ("/images/{image_id:int}", viewer_page, ["GET"], "web_viewer"),
        ("/model", model_page, ["GET"], "web_model"),
        ("/model/plots/{name}", model_plot, ["GET"], "web_model_plot"),
        ("/admin/audit", audit_page, ["GET"], "web_audit"),
    )
    return [
        Route(path, endpoint, methods=methods, name=name, include_in_schema=False)
        for path, endpoint, methods, name in table
    ]

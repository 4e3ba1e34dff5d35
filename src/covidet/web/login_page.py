"""Signing in and out of the web app: ``/`` (to the worklist), ``GET``/``POST /login``, ``POST /logout``.

Sign-in is a form post to ``/login``. Before a session exists there is no CSRF token to check, so the
form carries a random token that must match a short-lived cookie set with the form (double-submit):
another site cannot sign a browser in to an account of its choosing. Failed sign-ins go through the
API's throttle (:mod:`covidet.api.ratelimit`, 429 while locked) and are audited as
``auth.login_failed``; a sign-in as ``auth.login`` with ``"via": "web"``. ``/logout`` is a form post
with the session's CSRF token (checked by :func:`covidet.api.auth.get_current_user`).
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets

from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from covidet.api.auth import (
    clear_session_cookie,
    end_session,
    record_audit,
    set_session_cookie,
    start_session,
)
from covidet.api.ratelimit import LoginLocked, throttled_authenticate
from covidet.store import review_queries as rq
from covidet.web.access import database, page_user, safe_next, set_form_cookie
from covidet.web.rendering import render

__all__ = ["LOGIN_CSRF_COOKIE", "home", "login_form", "login_submit", "logout"]

logger = logging.getLogger(__name__)

#: Double-submit cookie of the sign-in form (there is no session, hence no session CSRF token, yet).
LOGIN_CSRF_COOKIE = "covidet_login_csrf"


async def home(request: Request) -> Response:
    """``/``: the worklist."""
    return RedirectResponse("/worklist", status_code=303)


def _login_form(
    request: Request, *, error: str | None = None, status_code: int = 200, username: str = ""
) -> Response:
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "login.html",
        {
            "login_csrf": token,
            "next": safe_next(request.query_params.get("next") or None),
            "error": error,
            "username": username,
        },
        user=None,
        status_code=status_code,
    )
    set_form_cookie(response, request, LOGIN_CSRF_COOKIE, token, max_age=3600, path="/login")
    return response


async def login_form(request: Request) -> Response:
    """The sign-in form; a signed-in user goes straight on."""
    if await page_user(request) is not None:
        return RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
    return _login_form(request)


async def login_submit(request: Request) -> Response:
    """Check the form's token and the password; start a session and go to ``next``."""
    form = await request.form(max_files=0, max_fields=8, max_part_size=4096)
    username = str(form.get("username") or "")[:64]
    password = str(form.get("password") or "")[:1024]
    sent = str(form.get("csrf_token") or "")
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    target = safe_next(str(form.get("next") or "") or None)
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
    db = database(request)
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
    user = await page_user(request)  # 403 without the CSRF token
    response = RedirectResponse("/login", status_code=303)
    if user is not None:
        db = database(request)
        await run_in_threadpool(end_session, db, user)
        await run_in_threadpool(
            record_audit, db, request, "auth.logout", user=user, details={"via": user.via, "page": "web"}
        )
        if user.via == "session":
            clear_session_cookie(response, request)
    return response

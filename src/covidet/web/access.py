"""Who may see a web page: the signed-in user of a request, the guard of a page, safe redirects.

Contract: a page calls :func:`guard` first. It gets the user (session cookie, or a bearer token for
scripts), or the response to send instead: a redirect to the sign-in form (nobody signed in) or a
403 page (wrong role). An unsafe request by session without the right CSRF token raises the API's
403 (:func:`covidet.api.auth.get_optional_user`). Redirect targets taken from a request go through
:func:`safe_next`, so no link can send a user to another site.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from covidet.api.auth import SESSION_COOKIE, AuthenticatedUser, get_optional_user
from covidet.store.db import Database
from covidet.store.models import Role
from covidet.web.rendering import render

__all__ = [
    "NO_CONTROL",
    "database",
    "error_page",
    "guard",
    "not_found",
    "page_user",
    "safe_next",
    "set_form_cookie",
]

logger = logging.getLogger(__name__)

#: Text without control characters (what a query value or a redirect target may be).
NO_CONTROL = re.compile(r"^[^\x00-\x1f\x7f]*$")


def database(request: Request) -> Database:
    """The app's database (``app.state.db``)."""
    db: Database = request.app.state.db
    return db


async def page_user(request: Request) -> AuthenticatedUser | None:
    """The signed-in user (session cookie, or a bearer token for scripts), or ``None``. An unsafe
    request by session without the right CSRF token raises the API's 403."""
    bearer: str | None = None
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            bearer = value.strip()
    return await get_optional_user(request, database(request), bearer, request.cookies.get(SESSION_COOKIE))


def safe_next(target: str | None) -> str:
    """``target`` when it is a path of this site, else the worklist (no open redirects)."""
    if (
        target
        and target.startswith("/")
        and not target.startswith(("//", "/\\"))
        and NO_CONTROL.match(target)
    ):
        return target
    return "/worklist"


def _to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


async def guard(request: Request, *, admin: bool = False) -> AuthenticatedUser | Response:
    """The user allowed on this page, or the response to send instead: a redirect to the sign-in form
    (not signed in) or a 403 page (wrong role). Radiologists and admins pass; with ``admin``, admins
    only."""
    user = await page_user(request)
    if user is None:
        return _to_login(request)
    allowed = {Role.ADMIN.value} if admin else {Role.ADMIN.value, Role.RADIOLOGIST.value}
    if user.role not in allowed:
        logger.warning("page %s refused to %s (%s)", request.url.path, user.username, user.role)
        return error_page(
            request,
            user,
            "Not allowed",
            f"This page needs the role {' or '.join(sorted(allowed))}; "
            f"you are signed in as {user.username} ({user.role}).",
            status_code=403,
        )
    return user


def error_page(
    request: Request,
    user: AuthenticatedUser,
    title: str,
    message: str,
    *,
    status_code: int,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The error page (``error.html``) with ``title`` and ``message``."""
    return render(
        request,
        "error.html",
        {"title": title, "message": message},
        user=user,
        status_code=status_code,
        headers=headers,
    )


def not_found(request: Request, user: AuthenticatedUser, message: str) -> Response:
    """The 404 page with ``message``."""
    return error_page(request, user, "Not found", message, status_code=404)


def set_form_cookie(
    response: Response, request: Request, name: str, value: str, *, max_age: int, path: str
) -> None:
    """Set a cookie of the pages' forms: HTTP-only, strict same-site, secure over HTTPS, valid only
    below ``path`` for ``max_age`` seconds."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )

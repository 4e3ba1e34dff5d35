"""Who is calling: the request's user from a bearer token or a session cookie, CSRF, roles.

Three kinds of credential, each for one kind of caller:

* **Bearer tokens** (scripts, other services, the interactive docs): ``POST /api/v1/auth/token`` with
  an OAuth2 password form answers ``{"access_token": "cvt_...", "token_type": "bearer"}``; requests
  send ``Authorization: Bearer cvt_...``. Tokens expire after ``settings.token_days`` and can be
  revoked. A browser never attaches them on its own, so bearer requests need no CSRF token.
* **Session cookies** (the web app): ``POST /api/v1/auth/login`` sets ``covidet_session`` (HttpOnly,
  SameSite=Lax, Secure when the request came over HTTPS) and answers the session's CSRF token. Every
  unsafe request (POST, PUT, PATCH, DELETE) authenticated by the cookie must echo that token in the
  ``X-CSRF-Token`` header or a ``csrf_token`` form field, else 403. Sessions live server-side
  (:class:`~covidet.store.models.WebSession`, only the SHA-256 of the id is stored), so logout, expiry
  and deactivating a user end them at once, which a signed cookie could not do.
* **Device API keys** (``X-API-Key``) authenticate devices for ``POST /api/v1/images`` only
  (:mod:`covidet.api.deps`); they are refused everywhere else, so a device can send data but never
  read it.

Contract: routes depend on :data:`CurrentUser` (any signed-in user; 401 otherwise),
:data:`RadiologistUser` (radiologist or admin: patient data and reviews; 403 for others) or
:data:`AdminUser`; the web app may use :data:`OptionalUser` to redirect instead of answering 401.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyCookie, OAuth2PasswordBearer

from covidet.api.deps import API_KEY_HEADER, API_PREFIX, DatabaseDep
from covidet.store import review_queries as rq
from covidet.store.db import Database
from covidet.store.models import Role, utcnow

__all__ = [
    "CSRF_FORM_FIELD",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "TOKEN_URL",
    "AdminUser",
    "AuthenticatedUser",
    "CurrentUser",
    "OptionalUser",
    "RadiologistUser",
    "get_current_user",
    "get_optional_user",
    "require_roles",
]

logger = logging.getLogger(__name__)

TOKEN_URL = f"{API_PREFIX}/auth/token"
SESSION_COOKIE = "covidet_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"
#: ``last_used_at`` of a token is written at most this often, so reads do not all become writes.
_TOUCH_INTERVAL = timedelta(seconds=60)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="covidet"'}

bearer_scheme = OAuth2PasswordBearer(
    tokenUrl=TOKEN_URL,
    scheme_name="BearerToken",
    description="A user's token from POST /api/v1/auth/token (OAuth2 password form); "
    "send it as 'Authorization: Bearer <token>'.",
    auto_error=False,  # answered by get_current_user, which also accepts the session cookie
)
session_cookie_scheme = APIKeyCookie(
    name=SESSION_COOKIE,
    scheme_name="SessionCookie",
    description="The browser session set by POST /api/v1/auth/login. Unsafe methods also need the "
    f"session's CSRF token in the {CSRF_HEADER} header (or a '{CSRF_FORM_FIELD}' form field).",
    auto_error=False,
)


@dataclass(frozen=True, slots=True)
class AuthenticatedUser:
    """Who made a request, as plain values. ``via`` says how: ``token`` (``credential_id`` is the
    :class:`~covidet.store.models.ApiToken` id) or ``session`` (the WebSession id; ``csrf_token`` is
    the token unsafe requests of this session must echo)."""

    id: int
    username: str
    role: str
    via: Literal["token", "session"]
    credential_id: int
    csrf_token: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN.value


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers=_BEARER_CHALLENGE)


def _user_by_token(db: Database, token: str) -> AuthenticatedUser | None:
    now = utcnow()
    with db.session() as session:
        found = rq.authenticate_api_token(session, token, now=now)
        if found is None:
            return None
        api_token, user = found
        stale = api_token.last_used_at is None or now - api_token.last_used_at > _TOUCH_INTERVAL
        result = AuthenticatedUser(user.id, user.username, user.role, "token", api_token.id)
    if stale:
        with db.session(write=True) as session:
            rq.touch_api_token(session, result.credential_id, now=now)
    return result


def _user_by_session(db: Database, session_id: str) -> AuthenticatedUser | None:
    with db.session() as session:
        found = rq.web_session_lookup(session, session_id, now=utcnow())
        if found is None:
            return None
        web_session, user = found
        return AuthenticatedUser(
            user.id, user.username, user.role, "session", web_session.id, web_session.csrf_token
        )


async def _check_csrf(request: Request, user: AuthenticatedUser) -> None:
    """Refuse (403) an unsafe cookie-authenticated request that does not echo the session's CSRF
    token. The token is in no cookie, so a cross-site page cannot read or send it."""
    sent = request.headers.get(CSRF_HEADER)
    if not sent:
        content_type = request.headers.get("content-type", "").lower()
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            field = (await request.form()).get(CSRF_FORM_FIELD)
            sent = field if isinstance(field, str) else None
    if not sent or not user.csrf_token or not hmac.compare_digest(sent.encode(), user.csrf_token.encode()):
        logger.warning(
            "%s %s by %s: missing or wrong CSRF token", request.method, request.url.path, user.username
        )
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"missing or wrong CSRF token: send the session's token in the {CSRF_HEADER} header",
        )


async def get_current_user(
    request: Request,
    db: DatabaseDep,
    bearer: Annotated[str | None, Security(bearer_scheme)],
    session_id: Annotated[str | None, Security(session_cookie_scheme)],
) -> AuthenticatedUser:
    """The signed-in user: by bearer token when an ``Authorization: Bearer`` header is sent (the
    cookie is then ignored), else by session cookie (then unsafe methods must carry the CSRF token).

    Raises:
        HTTPException: 401 without a valid credential (a device API key is not one); 403 for a
            cookie-authenticated unsafe request without the right CSRF token.
    """
    if bearer is not None:
        user = await run_in_threadpool(_user_by_token, db, bearer) if bearer else None
        if user is None:
            raise _unauthorized("invalid, expired or revoked token: get a new one from " + TOKEN_URL)
        return user
    if session_id:
        user = await run_in_threadpool(_user_by_session, db, session_id)
        if user is None:
            raise _unauthorized("session expired or ended: sign in again")
        if request.method not in _SAFE_METHODS:
            await _check_csrf(request, user)
        return user
    if request.headers.get(API_KEY_HEADER):
        raise _unauthorized(
            f"a device API key only uploads images (POST {API_PREFIX}/images); "
            "reading data needs a user's bearer token or session"
        )
    raise _unauthorized(
        f"not authenticated: send 'Authorization: Bearer <token>' (from {TOKEN_URL}) or sign in"
    )


async def get_optional_user(
    request: Request,
    db: DatabaseDep,
    bearer: Annotated[str | None, Security(bearer_scheme)],
    session_id: Annotated[str | None, Security(session_cookie_scheme)],
) -> AuthenticatedUser | None:
    """Like :func:`get_current_user`, but ``None`` where that answers 401 (for pages that redirect to
    the login form). A missing CSRF token is still a 403."""
    try:
        return await get_current_user(request, db, bearer, session_id)
    except HTTPException as exc:
        if exc.status_code == status.HTTP_401_UNAUTHORIZED:
            return None
        raise


CurrentUser = Annotated[AuthenticatedUser, Depends(get_current_user)]
OptionalUser = Annotated[AuthenticatedUser | None, Depends(get_optional_user)]


def require_roles(*roles: Role) -> Callable[..., AuthenticatedUser]:
    """A dependency admitting signed-in users of ``roles`` only (403 for others)."""
    allowed = frozenset(role.value for role in roles)

    def dependency(request: Request, user: CurrentUser) -> AuthenticatedUser:
        if user.role not in allowed:
            logger.warning(
                "%s %s refused to %s (%s)", request.method, request.url.path, user.username, user.role
            )
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"{request.method} {request.url.path} needs the role {' or '.join(sorted(allowed))}",
            )
        return user

    return dependency


#: Radiologists and admins: patient data, reviews, alerts, exports.
RadiologistUser = Annotated[AuthenticatedUser, Depends(require_roles(Role.RADIOLOGIST, Role.ADMIN))]
#: Admins: users, devices, audit log.
AdminUser = Annotated[AuthenticatedUser, Depends(require_roles(Role.ADMIN))]

"""``/api/v1/auth``: bearer tokens, browser login and logout, the signed-in user and their tokens.

``POST /auth/token`` and ``POST /auth/login`` are the only routes besides health that need no
credentials. Both take the OAuth2 password form (``application/x-www-form-urlencoded`` with
``username`` and ``password``) and answer a wrong username, password or an inactive account with the
same 401, so nobody can learn which usernames exist. Every attempt is in the audit log. Too many
failures for a username or from an address lock them for a while: 429 with ``Retry-After``
(:mod:`covidet.api.ratelimit`).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field, StringConstraints

from covidet.api.auth import (
    CurrentUser,
    clear_session_cookie,
    end_session,
    issue_token,
    record_audit,
    set_session_cookie,
    start_session,
)
from covidet.api.deps import DatabaseDep, SettingsDep
from covidet.api.ratelimit import LoginLocked, throttled_authenticate
from covidet.api.schemas import (
    AUTH_ERRORS,
    JSON_NUMBER,
    NO_CONTROL_PATTERN,
    UNSAFE_ERRORS,
    IdPath,
    error_responses,
)
from covidet.store import review_queries as rq
from covidet.store.models import ApiToken

__all__ = [
    "ApiTokenCreate",
    "ApiTokenCreatedPublic",
    "ApiTokenPublic",
    "LoginPublic",
    "MePublic",
    "TokenPublic",
    "router",
]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/auth", tags=["auth"])

_WRONG = "incorrect username or password"


class TokenPublic(BaseModel):
    """An OAuth2 access token (RFC 6749 section 5.1), valid until ``expires_at``."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime | None


class MePublic(BaseModel):
    """The signed-in user. ``csrf_token`` is set for a browser session: unsafe requests of the session
    must send it (``X-CSRF-Token`` header or ``csrf_token`` form field)."""

    id: int
    username: str
    role: str
    authenticated_by: Literal["token", "session"]
    csrf_token: str | None = None


class LoginPublic(BaseModel):
    """A new browser session (the cookie is in ``Set-Cookie``)."""

    user: MePublic
    csrf_token: str
    expires_at: datetime


class ApiTokenCreate(BaseModel):
    """A named token for the signed-in user, e.g. for a script; ``days`` defaults to the server's
    ``token_days``."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=NO_CONTROL_PATTERN)]
    days: Annotated[int, Field(ge=1, le=3650), JSON_NUMBER] | None = None


class ApiTokenPublic(BaseModel):
    """A token's metadata (never the token itself, which is shown once)."""

    id: int
    name: str
    user_id: int
    username: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked: bool


class ApiTokenCreatedPublic(ApiTokenPublic):
    access_token: str = Field(description="the token: shown once, store it now")


def _token_public(row: ApiToken) -> ApiTokenPublic:
    return ApiTokenPublic(
        id=row.id,
        name=row.name,
        user_id=row.user_id,
        username=row.user.username,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        revoked=row.revoked,
    )


async def _password_login(request: Request, db: DatabaseDep, form: _PasswordForm) -> tuple[int, str, str]:
    try:
        found = await throttled_authenticate(request, db, form.username, form.password)
    except LoginLocked as exc:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"too many failed sign-ins for this username or address: try again in "
            f"{exc.retry_after} seconds",
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    if found is None:
        # The name tried is kept (cut, and only when it could be a username) to spot guessing.
        tried = form.username if re.fullmatch(rq.USERNAME_PATTERN, form.username) else None
        await run_in_threadpool(
            record_audit, db, request, "auth.login_failed", username=tried, details={"path": request.url.path}
        )
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, detail=_WRONG, headers={"WWW-Authenticate": "Bearer"}
        )
    return found


class _PasswordForm(OAuth2PasswordRequestForm):
    """FastAPI's OAuth2 password form, with what the server always refused written into the schema:
    an empty username or password is missing (422), and a password longer than 1024 characters can
    match no account. ``grant_type`` is not checked (a form cannot tell a JSON null from "null")."""

    def __init__(
        self,
        *,
        grant_type: Annotated[str | None, Form()] = None,  # "password" when sent; not checked
        username: Annotated[str, Form(min_length=1)],
        password: Annotated[
            str, Form(min_length=1, max_length=1024, json_schema_extra={"format": "password"})
        ],
        scope: Annotated[str, Form()] = "",
        client_id: Annotated[str | None, Form()] = None,
        client_secret: Annotated[str | None, Form(json_schema_extra={"format": "password"})] = None,
    ) -> None:
        super().__init__(
            grant_type=grant_type,
            username=username,
            password=password,
            scope=scope,
            client_id=client_id,
            client_secret=client_secret,
        )


PasswordForm = Annotated[_PasswordForm, Depends()]


@router.post("/token", response_model=TokenPublic, responses=error_responses(400, 401, 413, 422, 429))
async def create_token(
    request: Request, form: PasswordForm, db: DatabaseDep, settings: SettingsDep
) -> TokenPublic:
    """Exchange a username and password for a bearer token (OAuth2 password grant).

    ``client_id``, when sent, names the token in ``GET /auth/tokens``.
    """
    user_id, username, _role = await _password_login(request, db, form)
    name = (form.client_id or "password grant")[:128]
    if not name.isprintable():
        name = "password grant"
    issued = await run_in_threadpool(issue_token, db, settings, user_id, name=name)
    await run_in_threadpool(
        record_audit,
        db,
        request,
        "auth.token",
        username=username,
        object_type="api_token",
        object_id=issued.token_id,
    )
    return TokenPublic(access_token=issued.access_token, expires_at=issued.expires_at)


@router.post("/login", response_model=LoginPublic, responses=error_responses(400, 401, 413, 422, 429))
async def login(
    request: Request, response: Response, form: PasswordForm, db: DatabaseDep, settings: SettingsDep
) -> LoginPublic:
    """Sign in a browser: sets the session cookie and answers the session's CSRF token."""
    user_id, username, role = await _password_login(request, db, form)
    issued = await run_in_threadpool(start_session, db, settings, user_id)
    set_session_cookie(response, request, issued)
    await run_in_threadpool(
        record_audit, db, request, "auth.login", username=username, object_type="user", object_id=user_id
    )
    me = MePublic(
        id=user_id, username=username, role=role, authenticated_by="session", csrf_token=issued.csrf_token
    )
    return LoginPublic(user=me, csrf_token=issued.csrf_token, expires_at=issued.expires_at)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=UNSAFE_ERRORS)
async def logout(request: Request, response: Response, user: CurrentUser, db: DatabaseDep) -> Response:
    """End the session that authenticated this request (and clear its cookie), or revoke the bearer
    token that did."""
    await run_in_threadpool(end_session, db, user)
    await run_in_threadpool(record_audit, db, request, "auth.logout", user=user, details={"via": user.via})
    answer = Response(status_code=status.HTTP_204_NO_CONTENT)
    if user.via == "session":
        clear_session_cookie(answer, request)
    return answer


@router.get("/me", response_model=MePublic, responses=AUTH_ERRORS)
def me(user: CurrentUser) -> MePublic:
    """Who is signed in, how, and (for a browser session) the CSRF token."""
    return MePublic(
        id=user.id,
        username=user.username,
        role=user.role,
        authenticated_by=user.via,
        csrf_token=user.csrf_token if user.via == "session" else None,
    )


@router.get("/tokens", response_model=list[ApiTokenPublic], responses=AUTH_ERRORS)
def list_tokens(user: CurrentUser, db: DatabaseDep) -> list[ApiTokenPublic]:
    """The signed-in user's tokens, newest first (admins: everyone's)."""
    with db.session() as session:
        rows = rq.list_api_tokens(session, user_id=None if user.is_admin else user.id)
        return [_token_public(row) for row in rows]


@router.post(
    "/tokens",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiTokenCreatedPublic,
    responses=UNSAFE_ERRORS,
)
def create_named_token(
    request: Request, body: ApiTokenCreate, user: CurrentUser, db: DatabaseDep, settings: SettingsDep
) -> ApiTokenCreatedPublic:
    """A new named token for the signed-in user; the token is in the answer only."""
    issued = issue_token(db, settings, user.id, name=body.name, days=body.days)
    record_audit(db, request, "token.create", user=user, object_type="api_token", object_id=issued.token_id)
    with db.session() as session:
        row = rq.get_api_token(session, issued.token_id)
        assert row is not None
        return ApiTokenCreatedPublic(**_token_public(row).model_dump(), access_token=issued.access_token)


@router.delete(
    "/tokens/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=UNSAFE_ERRORS | error_responses(404),
)
def revoke_token(request: Request, token_id: IdPath, user: CurrentUser, db: DatabaseDep) -> Response:
    """Revoke a token: one's own, or anyone's for an admin. Idempotent."""
    with db.session(write=True) as session:
        row = rq.get_api_token(session, token_id)
        # Another user's token is reported missing, not forbidden: its existence is not the caller's.
        if row is None or (row.user_id != user.id and not user.is_admin):
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no API token with id {token_id}")
        rq.revoke_api_token(session, token_id)
    record_audit(db, request, "token.revoke", user=user, object_type="api_token", object_id=token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

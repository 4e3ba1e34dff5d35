"""Issuing and ending credentials: bearer tokens, browser sessions and their cookie.

Contract: :func:`issue_token` and :func:`start_session` commit the new credential before they return
it; the token and the session id are shown once (only their SHA-256 is stored, see
:mod:`covidet.store.account_queries`). :func:`end_session` ends whichever credential authenticated the
user (logout). The session cookie is HttpOnly, SameSite=Lax and Secure when the request came over
HTTPS.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import Request, Response

from covidet.api.auth.current_user import SESSION_COOKIE, AuthenticatedUser
from covidet.config import Settings
from covidet.store import review_queries as rq
from covidet.store.db import Database
from covidet.store.models import utcnow

__all__ = [
    "IssuedSession",
    "IssuedToken",
    "clear_session_cookie",
    "end_session",
    "issue_token",
    "set_session_cookie",
    "start_session",
]


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token_id: int
    access_token: str
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class IssuedSession:
    session_id: str  # for the cookie only
    csrf_token: str
    expires_at: datetime


def issue_token(
    db: Database, settings: Settings, user_id: int, *, name: str, days: int | None = None
) -> IssuedToken:
    """A new bearer token for a user, valid ``days`` (default ``settings.token_days``)."""
    expires_at = utcnow() + timedelta(days=days or settings.token_days)
    with db.session(write=True) as session:
        row, token = rq.create_api_token(session, user_id, name=name, expires_at=expires_at)
        return IssuedToken(row.id, token, row.expires_at)


def start_session(db: Database, settings: Settings, user_id: int) -> IssuedSession:
    """A new browser session for a user, valid ``settings.session_minutes``."""
    expires_at = utcnow() + timedelta(minutes=settings.session_minutes)
    with db.session(write=True) as session:
        row, session_id = rq.create_web_session(session, user_id, expires_at=expires_at)
        return IssuedSession(session_id, row.csrf_token, row.expires_at)


def end_session(db: Database, user: AuthenticatedUser) -> None:
    """Log out: end the session, or revoke the token, that authenticated ``user``."""
    with db.session(write=True) as session:
        if user.via == "session":
            rq.delete_web_session(session, user.credential_id)
        else:
            rq.revoke_api_token(session, user.credential_id)


def set_session_cookie(response: Response, request: Request, issued: IssuedSession) -> None:
    """Set the session cookie: HttpOnly (no script reads it), SameSite=Lax (not sent on cross-site
    POSTs), Secure when this request came over HTTPS (behind a proxy, run uvicorn with
    ``--proxy-headers`` so that the scheme is the client's)."""
    max_age = max(1, int((issued.expires_at - utcnow()).total_seconds()))
    response.set_cookie(
        SESSION_COOKIE,
        issued.session_id,
        max_age=max_age,
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="lax",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    """Delete the session cookie (with the attributes it was set with, so browsers drop it)."""
    response.delete_cookie(
        SESSION_COOKIE, path="/", secure=request.url.scheme == "https", httponly=True, samesite="lax"
    )

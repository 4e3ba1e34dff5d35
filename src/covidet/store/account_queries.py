"""Accounts: users (names, roles, password hashes), API tokens and browser sessions.

Passwords are hashed by the caller (``covidet.api.auth``); this module only stores hashes. Tokens
and session ids are stored as SHA-256 hex digests only. Functions take a session and never commit;
see :mod:`covidet.store.review_queries`.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, selectinload

from covidet.store.models import (
    ApiToken,
    Role,
    User,
    WebSession,
    utcnow,
)
from covidet.store.query_common import Conflict, Invalid, NotFound, _page, sha256_hex

__all__ = [
    "USERNAME_PATTERN",
    "authenticate_api_token",
    "count_active_admins",
    "create_api_token",
    "create_user",
    "create_web_session",
    "delete_web_session",
    "get_api_token",
    "get_user",
    "list_api_tokens",
    "list_users",
    "rehash_password",
    "revoke_api_token",
    "touch_api_token",
    "update_user",
    "user_by_username",
    "web_session_lookup",
]

#: Usernames: 1-64 letters, digits and ``. _ @ -``, starting with a letter or digit.
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
_USERNAME = re.compile(USERNAME_PATTERN)


# -------------------------------------------------------------------------------------------- users


def _check_username(username: str) -> str:
    if not _USERNAME.fullmatch(username):
        raise Invalid("a username is 1-64 letters, digits and . _ @ -, starting with a letter or digit")
    return username


def _check_role(role: str) -> str:
    try:
        return Role(role).value
    except ValueError:
        raise Invalid(f"unknown role {role!r} (expected admin or radiologist)") from None


def create_user(session: Session, username: str, *, password_hash: str, role: str) -> User:
    """A new active user.

    Raises:
        Invalid: a bad username or role. Conflict: the username is taken (case-insensitively).
    """
    _check_username(username)
    role = _check_role(role)
    if user_by_username(session, username) is not None:
        raise Conflict(f"the username {username!r} is taken")
    user = User(username=username, role=role, password_hash=password_hash, active=True)
    session.add(user)
    session.flush()
    return user


def user_by_username(session: Session, username: str) -> User | None:
    """The user with this name, compared case-insensitively (``Alice`` and ``alice`` are one person)."""
    return session.scalar(select(User).where(func.lower(User.username) == username.lower()))


def get_user(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def list_users(session: Session, *, limit: int = 50, offset: int = 0) -> tuple[list[User], int]:
    return _page(session, select(User).order_by(User.id.asc()), limit, offset)


def count_active_admins(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(User).where(User.role == Role.ADMIN.value, User.active.is_(True))
        )
        or 0
    )


def update_user(
    session: Session,
    user_id: int,
    *,
    active: bool | None = None,
    role: str | None = None,
    password_hash: str | None = None,
) -> User:
    """Change a user; ``None`` keeps a field. Deactivating a user, or changing their password, ends
    their browser sessions and revokes their tokens at once.

    Raises:
        NotFound: no such user. Invalid: a bad role. Conflict: the change would leave no active admin.
    """
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    new_role = _check_role(role) if role is not None else user.role
    new_active = user.active if active is None else active
    was_admin = user.active and user.role == Role.ADMIN.value
    if was_admin and not (new_active and new_role == Role.ADMIN.value) and count_active_admins(session) <= 1:
        raise Conflict(f"{user.username!r} is the last active admin: make another admin first")
    user.role = new_role
    user.active = new_active
    if password_hash is not None:
        user.password_hash = password_hash
    if not new_active or password_hash is not None:
        _end_credentials(session, user.id)
    session.flush()
    return user


def rehash_password(session: Session, user_id: int, password_hash: str) -> None:
    """Store a new hash of the *same* password (stronger hashing parameters): unlike a password change,
    the user's sessions and tokens stay valid."""
    session.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))


def _end_credentials(session: Session, user_id: int) -> None:
    session.execute(delete(WebSession).where(WebSession.user_id == user_id))
    session.execute(update(ApiToken).where(ApiToken.user_id == user_id).values(revoked=True))


# ----------------------------------------------------------------------------------- tokens, sessions


def create_api_token(
    session: Session, user_id: int, *, name: str, expires_at: datetime | None
) -> tuple[ApiToken, str]:
    """A new bearer token of a user; returns the row and the token, which is shown once (only its
    SHA-256 is stored). Tokens look like ``cvt_`` + 43 URL-safe characters (256 random bits)."""
    token = "cvt_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user_id, token_sha256=sha256_hex(token), name=name[:128], expires_at=expires_at)
    session.add(row)
    session.flush()
    return row, token


def authenticate_api_token(session: Session, token: str, *, now: datetime) -> tuple[ApiToken, User] | None:
    """The token row and its user when ``token`` is known, not revoked, not expired and its user is
    active; ``None`` otherwise (the caller answers all of these alike)."""
    row = session.execute(
        select(ApiToken, User)
        .join(User, ApiToken.user_id == User.id)
        .where(ApiToken.token_sha256 == sha256_hex(token), ApiToken.revoked.is_(False), User.active.is_(True))
    ).first()
    if row is None:
        return None
    api_token, user = row
    if api_token.expires_at is not None and api_token.expires_at <= now:
        return None
    return api_token, user


def touch_api_token(session: Session, token_id: int, *, now: datetime) -> None:
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


def get_api_token(session: Session, token_id: int) -> ApiToken | None:
    return session.get(ApiToken, token_id)


def list_api_tokens(session: Session, *, user_id: int | None = None) -> list[ApiToken]:
    """Tokens (of one user, or all), newest first, with their users loaded."""
    statement = select(ApiToken).options(selectinload(ApiToken.user)).order_by(ApiToken.id.desc())
    if user_id is not None:
        statement = statement.where(ApiToken.user_id == user_id)
    return list(session.scalars(statement))


def revoke_api_token(session: Session, token_id: int) -> ApiToken:
    """Revoke a token (idempotent). Raises :class:`NotFound` for an unknown id."""
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"no API token with id {token_id}")
    row.revoked = True
    session.flush()
    return row


def create_web_session(session: Session, user_id: int, *, expires_at: datetime) -> tuple[WebSession, str]:
    """A new browser session; returns the row and the session id for the cookie (shown once). Expired
    sessions of everyone are deleted on the way, so the table stays small."""
    session.execute(delete(WebSession).where(WebSession.expires_at <= utcnow()))
    session_id = secrets.token_urlsafe(32)
    row = WebSession(
        session_sha256=sha256_hex(session_id),
        user_id=user_id,
        csrf_token=secrets.token_urlsafe(32),
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, session_id


def web_session_lookup(session: Session, session_id: str, *, now: datetime) -> tuple[WebSession, User] | None:
    """The live session with this id and its active user, or ``None``."""
    row = session.execute(
        select(WebSession, User)
        .join(User, WebSession.user_id == User.id)
        .where(
            WebSession.session_sha256 == sha256_hex(session_id),
            WebSession.expires_at > now,
            User.active.is_(True),
        )
    ).first()
    return (row[0], row[1]) if row is not None else None


def delete_web_session(session: Session, web_session_id: int) -> None:
    """End a browser session (logout)."""
    session.execute(delete(WebSession).where(WebSession.id == web_session_id))

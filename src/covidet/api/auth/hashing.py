"""Passwords: argon2id hashes and the username/password check of a sign-in.

Contract: :func:`hash_password` refuses a password shorter than :data:`MIN_PASSWORD_LENGTH` (the full
policy of new passwords is :mod:`covidet.api.passwords`); :func:`verify_password` never raises, a
malformed hash simply never matches; :func:`authenticate` does the same argon2 work whether the user
is unknown, inactive or the password is wrong, so that nobody learns which usernames exist, and
re-hashes a password whose hash was made with weaker parameters.

Passwords are hashed with argon2id (argon2-cffi's RFC 9106 low-memory profile).
"""

from __future__ import annotations

import re
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from covidet.store import review_queries as rq
from covidet.store.db import Database

__all__ = ["MIN_PASSWORD_LENGTH", "authenticate", "hash_password", "verify_password"]

MIN_PASSWORD_LENGTH = 8


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id, RFC 9106 low-memory profile (t=3, m=64 MiB, p=4)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Verified against when the user does not exist, so that an unknown username costs the same time
    # as a wrong password.
    return _hasher().hash("covidet: no such user")


def hash_password(password: str) -> str:
    """The argon2id hash (PHC string) of ``password``.

    Raises:
        ValueError: a password shorter than :data:`MIN_PASSWORD_LENGTH` characters.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; a malformed hash never matches."""
    try:
        return _hasher().verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def authenticate(db: Database, username: str, password: str) -> tuple[int, str, str] | None:
    """``(user id, username, role)`` when ``username`` names an active user whose password is
    ``password``; ``None`` otherwise, after the same argon2 work in every case."""
    row = None
    if re.fullmatch(rq.USERNAME_PATTERN, username):  # anything else is no user (and no NUL)
        with db.session() as session:
            user = rq.user_by_username(session, username)
            if user is not None:
                row = (user.id, user.username, user.role, user.password_hash, user.active)
    if row is None:
        verify_password(_dummy_hash(), password)
        return None
    user_id, name, role, password_hash, active = row
    matched = verify_password(password_hash, password)
    if not (matched and active):
        return None
    if _hasher().check_needs_rehash(password_hash):  # parameters were raised since it was hashed
        with db.session(write=True) as session:
            rq.rehash_password(session, user_id, _hasher().hash(password))
    return user_id, name, role

"""``/api/v1/users`` (admin): create users, list them, change role, password or active state.

Users are never deleted: deactivating one ends their sessions and revokes their tokens at once, and
keeps their name in the audit log. The last active admin cannot be demoted or deactivated (409).
Changes are audited (``user.create``, ``user.update``). New passwords follow the policy of
:mod:`covidet.api.passwords` (at least 12 characters, not a common password): 422 otherwise.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Request, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from covidet.api import passwords
from covidet.api.auth import AdminUser, AuthenticatedUser, audit_in, hash_password
from covidet.api.deps import DatabaseDep
from covidet.api.schemas import AUTH_ERRORS, UNSAFE_ERRORS, IdPath, Limit, Offset, PageMeta, error_responses
from covidet.store import review_queries as rq
from covidet.store.db import Database
from covidet.store.models import Role, User

__all__ = ["UserCreate", "UserPublic", "UserUpdate", "UsersPublic", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/users", tags=["users"])


def _policy(password: str) -> str:
    passwords.check_password(password)  # WeakPassword is a ValueError: a 422 naming the rule
    return password


#: A new password: 12-128 characters, not a common one (covidet.api.passwords, ASVS 2.1).
Password = Annotated[
    str,
    StringConstraints(min_length=passwords.MIN_LENGTH, max_length=passwords.MAX_LENGTH),
    AfterValidator(_policy),
]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Annotated[str, StringConstraints(pattern=rq.USERNAME_PATTERN)] = Field(
        description="1-64 letters, digits and . _ @ -; unique, case-insensitively"
    )
    password: Password
    role: Role


class UserUpdate(BaseModel):
    """Only the fields sent change. A new password or ``active: false`` ends the user's sessions and
    revokes their tokens."""

    model_config = ConfigDict(extra="forbid")

    active: StrictBool | None = None  # true or false, not 0 or "no" (the schema says boolean)
    role: Role | None = None
    password: Password | None = None


class UserPublic(BaseModel):
    id: int
    username: str
    role: str
    active: bool
    created_at: datetime


class UsersPublic(PageMeta):
    items: list[UserPublic]


def user_public(user: User) -> UserPublic:
    return UserPublic(
        id=user.id, username=user.username, role=user.role, active=user.active, created_at=user.created_at
    )


@router.get("", response_model=UsersPublic, responses=AUTH_ERRORS)
def list_users(user: AdminUser, db: DatabaseDep, limit: Limit = 50, offset: Offset = 0) -> UsersPublic:
    """All users, oldest first."""
    with db.session() as session:
        rows, total = rq.list_users(session, limit=limit, offset=offset)
        return UsersPublic(items=[user_public(u) for u in rows], total=total, limit=limit, offset=offset)


def _create(db: Database, request: Request, admin: AuthenticatedUser, body: UserCreate) -> UserPublic:
    password_hash = hash_password(body.password)
    with db.session(write=True) as session:
        created = rq.create_user(session, body.username, password_hash=password_hash, role=body.role.value)
        audit_in(
            session,
            request,
            "user.create",
            user=admin,
            object_type="user",
            object_id=created.id,
            details={"username": created.username, "role": created.role},
        )
        return user_public(created)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPublic,
    responses=UNSAFE_ERRORS | error_responses(409),
)
def create_user(request: Request, body: UserCreate, user: AdminUser, db: DatabaseDep) -> UserPublic:
    """Create an active user; 409 when the username is taken."""
    created = _create(db, request, user, body)  # argon2 hashing: a sync route, on the thread pool
    logger.info("user %r (%s) created by %s", created.username, created.role, user.username)
    return created


def _update(
    db: Database, request: Request, admin: AuthenticatedUser, user_id: int, body: UserUpdate
) -> UserPublic:
    password_hash = hash_password(body.password) if body.password is not None else None
    with db.session(write=True) as session:
        changed = rq.update_user(
            session,
            user_id,
            active=body.active,
            role=body.role.value if body.role is not None else None,
            password_hash=password_hash,
        )
        audit_in(
            session,
            request,
            "user.update",
            user=admin,
            object_type="user",
            object_id=user_id,
            details={
                "fields": sorted(k for k in body.model_fields_set if getattr(body, k) is not None),
                "active": changed.active,
                "role": changed.role,
            },
        )
        return user_public(changed)


@router.patch("/{user_id}", response_model=UserPublic, responses=UNSAFE_ERRORS | error_responses(404, 409))
def update_user(
    request: Request, user_id: IdPath, body: UserUpdate, user: AdminUser, db: DatabaseDep
) -> UserPublic:
    """Change a user's role, password or active state (deactivate: ``{"active": false}``)."""
    return _update(db, request, user, user_id, body)

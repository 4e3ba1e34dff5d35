"""What the clinical query modules share: the refusals (:class:`QueryError` and its subclasses, one
sentence for the user each; the API maps them to 404, 403, 409 and 422), the SHA-256 of stored
secrets, paging and substring matching.

The public face of all clinical queries is :mod:`covidet.store.review_queries`, which re-exports these.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import Select, exists, func, or_, select
from sqlalchemy.orm import Session

from covidet.store.models import Image, Patient, Review, ReviewStatus

__all__ = [
    "Conflict",
    "Forbidden",
    "Invalid",
    "NotFound",
    "QueryError",
    "patient_matches",
    "sha256_hex",
    "signed_review_exists",
]

# ------------------------------------------------------------------------------------------ errors


class QueryError(Exception):
    """A refused request; ``str(error)`` is the one-sentence reason shown to the user."""


class NotFound(QueryError):
    """The object does not exist (404)."""


class Forbidden(QueryError):
    """The object exists but this user may not do that to it (403)."""


class Conflict(QueryError):
    """The request contradicts the current state: a duplicate name, a signed review (409)."""


class Invalid(QueryError):
    """The request is malformed in a way the schema cannot say: a box outside the image (422)."""


def sha256_hex(secret: str) -> str:
    """SHA-256 hex of a random secret (token, session id). 256-bit random values need no slow hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _page(session: Session, statement: Select[Any], limit: int, offset: int) -> tuple[list[Any], int]:
    """Rows ``offset .. offset + limit`` of ``statement`` (scalars) and the total count."""
    total = session.scalar(select(func.count()).select_from(statement.order_by(None).subquery())) or 0
    rows = list(session.scalars(statement.limit(limit).offset(offset)))
    return rows, int(total)


def _contains(column: Any, text: str) -> Any:
    """Case-insensitive substring match, with ``%`` and ``_`` in ``text`` taken literally."""
    return func.lower(column).contains(text.lower(), autoescape=True)


def signed_review_exists() -> Any:
    """``EXISTS`` a signed review of the :class:`Image` row of the enclosing query (correlated)."""
    return exists().where(Review.image_id == Image.id, Review.status == ReviewStatus.SIGNED.value)


def patient_matches(text: str) -> Any:
    """The patient filter of the lists: ``text`` is a case-insensitive substring of the patient key or
    name (of the :class:`Patient` joined into the enclosing query)."""
    return or_(_contains(Patient.patient_key, text), _contains(Patient.name, text))

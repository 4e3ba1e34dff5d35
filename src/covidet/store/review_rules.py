"""Rules that signing a review applies to the rest of the reading room.

Kept apart from :mod:`covidet.store.review_queries` (which calls them while signing) and from
:mod:`covidet.store.reading_room` (which reads their results), so that neither imports the other.

* **One report per image and radiologist.** The first review a radiologist signs of an image is their
  report; every later one they sign of the same image is an **addendum** that names that report
  (:attr:`covidet.store.models.Review.amends_review_id`). Nothing is overwritten: both stay, linked.
* **A claim ends when the study is read.** Once every image of a study has a signed review, the
  study's claim ("being read by") is released.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import CursorResult, delete, func, select
from sqlalchemy.orm import Session

from covidet.store.models import Image, Review, ReviewStatus, StudyClaim
from covidet.store.query_common import signed_review_exists

__all__ = ["first_report_id", "release_claim_when_read", "study_is_read"]


def first_report_id(
    session: Session, image_id: int, reviewer_id: int, *, exclude: int | None = None
) -> int | None:
    """The id of ``reviewer_id``'s first signed review of ``image_id`` (their report), or ``None``
    when they have signed none (``exclude``: a review id not to count, the one being signed)."""
    statement = select(Review.id).where(
        Review.image_id == image_id,
        Review.reviewer_id == reviewer_id,
        Review.status == ReviewStatus.SIGNED.value,
        Review.amends_review_id.is_(None),
    )
    if exclude is not None:
        statement = statement.where(Review.id != exclude)
    return session.scalar(statement.order_by(Review.signed_at.asc(), Review.id.asc()).limit(1))


def study_is_read(session: Session, study_id: int) -> bool:
    """Whether every image of the study has at least one signed review."""
    unread = session.scalar(
        select(func.count()).select_from(Image).where(Image.study_id == study_id, ~signed_review_exists())
    )
    return not unread


def release_claim_when_read(session: Session, image_id: int) -> bool:
    """Release the claim of ``image_id``'s study when the study is now read; whether one was released."""
    study_id = session.scalar(select(Image.study_id).where(Image.id == image_id))
    if study_id is None or not study_is_read(session, study_id):
        return False
    released = session.execute(delete(StudyClaim).where(StudyClaim.study_id == study_id))
    return bool(cast(CursorResult[tuple[()]], released).rowcount)  # a DELETE's result is a cursor result

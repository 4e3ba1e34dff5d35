"""Training export: the newest signed review of each image, with the boxes a radiologist confirmed,
relabelled or added (AI findings nobody acted on are never exported).

Functions take a session and never commit; see :mod:`covidet.store.review_queries`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from covidet.store.models import (
    Image,
    Review,
    ReviewAction,
    ReviewStatus,
    Study,
)

__all__ = [
    "ExportBox",
    "ExportRow",
    "training_export_rows",
]


@dataclass(frozen=True, slots=True)
class ExportBox:
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    action: str


@dataclass(frozen=True, slots=True)
class ExportRow:
    """The newest signed review of one image, as a training example: the reviewer's image label and
    the boxes the reviewer confirmed, relabelled or added."""

    review_id: int
    image_id: int
    image_path: str
    media_type: str
    patient_key: str
    label: str
    reviewer: str
    signed_at: datetime
    boxes: list[ExportBox] = field(default_factory=list)


#: Actions whose box is a positive example in a training export.
_EXPORTED_ACTIONS = (ReviewAction.CONFIRM.value, ReviewAction.RELABEL.value, ReviewAction.ADD.value)


def training_export_rows(
    session: Session, *, since: datetime | None = None, until: datetime | None = None
) -> list[ExportRow]:
    """One row per image that has a signed review (signed in ``[since, until]`` when given): its newest
    signed review. AI findings the reviewer did not act on are not exported: only human-confirmed
    boxes make training data."""
    conditions = [Review.status == ReviewStatus.SIGNED.value]
    if since is not None:
        conditions.append(Review.signed_at >= since)
    if until is not None:
        conditions.append(Review.signed_at <= until)
    reviews = session.scalars(
        select(Review)
        .where(*conditions)
        .order_by(Review.image_id.asc(), Review.signed_at.asc(), Review.id.asc())
        .options(
            selectinload(Review.findings),
            selectinload(Review.reviewer),
            selectinload(Review.image).selectinload(Image.study).selectinload(Study.patient),
        )
    )
    newest: dict[int, Review] = {}
    for review in reviews:
        newest[review.image_id] = review
    rows = []
    for image_id, review in sorted(newest.items()):
        assert review.label is not None and review.signed_at is not None  # enforced by sign_review
        boxes = [
            ExportBox(f.label or review.label, f.x1, f.y1, f.x2, f.y2, f.action)  # type: ignore[arg-type]
            for f in review.findings
            if f.action in _EXPORTED_ACTIONS and f.x1 is not None
        ]
        rows.append(
            ExportRow(
                review_id=review.id,
                image_id=image_id,
                image_path=review.image.path,
                media_type=review.image.media_type,
                patient_key=review.image.study.patient.patient_key,
                label=review.label,
                reviewer=review.reviewer.username,
                signed_at=review.signed_at,
                boxes=boxes,
            )
        )
    return rows

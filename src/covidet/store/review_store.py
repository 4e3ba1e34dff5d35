"""Reviews of images: a radiologist's draft (image label, comment, actions on the AI findings), its
changes and its signature (after which it never changes; :mod:`covidet.store.review_rules` makes a
second signature an addendum and releases the study's claim), and reading reviews back.

Functions take a session and never commit; see :mod:`covidet.store.review_queries`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from covidet.domain import Label
from covidet.store import review_rules
from covidet.store.models import (
    Image,
    Inference,
    Review,
    ReviewAction,
    ReviewFinding,
    ReviewStatus,
    utcnow,
)
from covidet.store.query_common import Conflict, Forbidden, Invalid, NotFound, _page
from covidet.store.study_queries import latest_inference

__all__ = [
    "FindingAction",
    "create_review",
    "get_review",
    "list_reviews",
    "newest_signed_review_id",
    "sign_review",
    "update_review",
]

# ------------------------------------------------------------------------------------------ reviews


@dataclass(frozen=True, slots=True)
class FindingAction:
    """One reviewer action as given by a client (see :class:`covidet.store.models.ReviewAction`).

    ``box`` is ``(x1, y1, x2, y2)`` in original-image pixels.
    """

    action: str
    source_finding_id: int | None = None
    label: str | None = None
    box: tuple[float, float, float, float] | None = None


def _check_label(label: str | None, where: str) -> str | None:
    if label is None:
        return None
    try:
        return Label(label).value
    except ValueError:
        allowed = ", ".join(item.value for item in Label)
        raise Invalid(f"{where}: unknown label {label!r} (expected one of {allowed})") from None


def _check_box(box: Sequence[float], image: Image, where: str) -> tuple[float, float, float, float]:
    if len(box) != 4 or not all(isinstance(v, int | float) and math.isfinite(v) for v in box):
        raise Invalid(f"{where}: a box is four finite numbers [x1, y1, x2, y2]")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x1 < x2 and y1 < y2):
        raise Invalid(f"{where}: box [x1, y1, x2, y2] needs x1 < x2 and y1 < y2")
    width, height = image.columns, image.rows
    if x1 < 0 or y1 < 0 or (width is not None and x2 > width) or (height is not None and y2 > height):
        size = f"{width}x{height}" if width and height else "the image"
        raise Invalid(f"{where}: box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the image ({size} pixels)")
    return x1, y1, x2, y2


def _review_findings(
    image: Image, inference: Inference | None, actions: Sequence[FindingAction]
) -> list[ReviewFinding]:
    """Validate ``actions`` against the AI findings the review refers to; rows to store.

    Raises:
        Invalid: an unknown action, a missing or foreign ``source_finding_id``, two actions on one
            finding, a bad label or box.
    """
    findings = {f.id: f for f in (inference.findings if inference is not None else [])}
    seen: set[int] = set()
    rows: list[ReviewFinding] = []
    for index, item in enumerate(actions):
        where = f"findings[{index}]"
        try:
            action = ReviewAction(item.action)
        except ValueError:
            allowed = ", ".join(a.value for a in ReviewAction)
            raise Invalid(f"{where}: unknown action {item.action!r} (expected one of {allowed})") from None
        label = _check_label(item.label, where)
        if action is ReviewAction.ADD:
            if item.source_finding_id is not None:
                raise Invalid(f"{where}: 'add' draws a new box; it takes no source_finding_id")
            if label is None or item.box is None:
                raise Invalid(f"{where}: 'add' needs a label and a box")
            rows.append(
                ReviewFinding(
                    action=action.value, label=label, **_box_columns(_check_box(item.box, image, where))
                )
            )
            continue
        if item.source_finding_id is None:
            raise Invalid(f"{where}: {action.value!r} needs the source_finding_id of an AI finding")
        source = findings.get(item.source_finding_id)
        if source is None:
            raise Invalid(
                f"{where}: finding {item.source_finding_id} is not a finding of the AI result under review"
                + (f" (inference {inference.id})" if inference is not None else " (the image has none)")
            )
        if source.id in seen:
            raise Invalid(f"{where}: finding {source.id} has more than one action")
        seen.add(source.id)
        box = (source.x1, source.y1, source.x2, source.y2)
        if action is ReviewAction.RELABEL:
            if label is None:
                raise Invalid(f"{where}: 'relabel' needs the new label")
            if item.box is not None:
                box = _check_box(item.box, image, where)
        else:
            if label is not None or item.box is not None:
                raise Invalid(
                    f"{where}: {action.value!r} keeps the AI's label and box; to change them use 'relabel'"
                )
            label = source.label
        rows.append(
            ReviewFinding(action=action.value, source_finding_id=source.id, label=label, **_box_columns(box))
        )
    return rows


def _box_columns(box: Sequence[float]) -> dict[str, float]:
    return dict(zip(("x1", "y1", "x2", "y2"), (float(v) for v in box), strict=True))


def create_review(
    session: Session,
    *,
    image_id: int,
    reviewer_id: int,
    label: str | None = None,
    comment: str | None = None,
    actions: Sequence[FindingAction] = (),
) -> Review:
    """A new draft review of an image by a reviewer, on the image's newest successful inference (or
    none, when the image was not analysed: then only ``add`` actions are possible).

    Raises:
        NotFound: no such image.
        Conflict: the reviewer already has a draft of this image (update it instead).
        Invalid: a bad label, action or box.
    """
    image = session.get(Image, image_id)
    if image is None:
        raise NotFound(f"no image with id {image_id}")
    draft = session.scalar(
        select(Review.id).where(
            Review.image_id == image_id,
            Review.reviewer_id == reviewer_id,
            Review.status == ReviewStatus.DRAFT.value,
        )
    )
    if draft is not None:
        raise Conflict(f"you already have draft review {draft} of image {image_id}: update that one")
    inference = latest_inference(session, image_id)
    review = Review(
        image_id=image_id,
        inference_id=inference.id if inference is not None else None,
        reviewer_id=reviewer_id,
        status=ReviewStatus.DRAFT.value,
        label=_check_label(label, "label"),
        comment=comment,
    )
    review.findings = _review_findings(image, inference, actions)
    session.add(review)
    session.flush()
    return review


def _own_draft(session: Session, review_id: int, reviewer_id: int) -> Review:
    review = get_review(session, review_id)
    if review is None:
        raise NotFound(f"no review with id {review_id}")
    if review.reviewer_id != reviewer_id:
        raise Forbidden(f"review {review_id} belongs to another reviewer")
    if review.status == ReviewStatus.SIGNED.value:
        raise Conflict(f"review {review_id} is signed: a signed review never changes")
    return review


def update_review(
    session: Session,
    review_id: int,
    *,
    reviewer_id: int,
    label: str | None = None,
    comment: str | None = None,
    actions: Sequence[FindingAction] | None = None,
    fields: Sequence[str] = ("label", "comment", "findings"),
) -> Review:
    """Change a draft: the names in ``fields`` are replaced (``findings`` replaces the whole list of
    actions with ``actions``); other fields are kept.

    Raises:
        NotFound: no such review. Forbidden: another reviewer's draft. Conflict: the review is signed.
        Invalid: a bad label, action or box.
    """
    review = _own_draft(session, review_id, reviewer_id)
    if "label" in fields:
        review.label = _check_label(label, "label")
    if "comment" in fields:
        review.comment = comment
    if "findings" in fields:
        inference = session.get(Inference, review.inference_id) if review.inference_id is not None else None
        review.findings = _review_findings(review.image, inference, actions or ())
    review.updated_at = utcnow()
    session.flush()
    return review


def sign_review(session: Session, review_id: int, *, reviewer_id: int, now: datetime | None = None) -> Review:
    """Sign a draft: from now on it never changes. If the reviewer already signed a review of this
    image, this one becomes an addendum that names it (``amends_review_id``); once every image of the
    study is signed, the study's claim is released (:mod:`covidet.store.review_rules`).

    Raises:
        NotFound, Forbidden, Conflict: as :func:`update_review`. Invalid: the review has no label.
    """
    review = _own_draft(session, review_id, reviewer_id)
    if review.label is None:
        raise Invalid(f"review {review_id} has no label: set the image-level conclusion before signing")
    now = now or utcnow()
    # A second signature of the same image by the same reviewer is an addendum to their report.
    review.amends_review_id = review_rules.first_report_id(
        session, review.image_id, reviewer_id, exclude=review.id
    )
    review.status = ReviewStatus.SIGNED.value
    review.signed_at = now
    review.updated_at = now
    session.flush()
    review_rules.release_claim_when_read(session, review.image_id)
    return review


def get_review(session: Session, review_id: int) -> Review | None:
    """A review with its reviewer, image and findings loaded."""
    return session.scalar(
        select(Review)
        .where(Review.id == review_id)
        .options(selectinload(Review.reviewer), selectinload(Review.findings), selectinload(Review.image))
    )


def newest_signed_review_id(session: Session, image_id: int) -> int | None:
    """Id of the image's newest signed review (by signature time, then id), or ``None``."""
    review_id = session.scalar(
        select(Review.id)
        .where(Review.image_id == image_id, Review.status == ReviewStatus.SIGNED.value)
        .order_by(Review.signed_at.desc(), Review.id.desc())
        .limit(1)
    )
    return None if review_id is None else int(review_id)


def list_reviews(
    session: Session,
    *,
    image_id: int | None = None,
    status: str | None = None,
    reviewer_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Review], int]:
    """Reviews, newest first, optionally of one image, in one status or by one reviewer."""
    statement = select(Review)
    if image_id is not None:
        statement = statement.where(Review.image_id == image_id)
    if status is not None:
        statement = statement.where(Review.status == status)
    if reviewer_id is not None:
        statement = statement.where(Review.reviewer_id == reviewer_id)
    statement = statement.order_by(Review.id.desc()).options(
        selectinload(Review.reviewer), selectinload(Review.findings)
    )
    return _page(session, statement, limit, offset)

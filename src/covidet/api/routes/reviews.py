"""``/api/v1/reviews``: a radiologist's reading of an image, stored beside (never over) the AI output.

A review starts as a ``draft`` of its reviewer (one draft per image and reviewer), holding the
image-level conclusion (``label``), a comment and one action per box: ``confirm``, ``reject``,
``relabel`` or ``delete`` an AI finding (by ``source_finding_id``), or ``add`` a box the AI missed.
``POST /reviews/{id}/sign`` makes it final: a signed review never changes (409). Only the reviewer
may change or sign a draft. A radiologist signs one report per image: a later review they sign of the
same image is an **addendum** whose ``amends_review_id`` names the report (also in the audit event).
Every action and every read is audited (``review.create``, ``review.update``, ``review.sign``,
``read.review``, ``read.reviews``), the changes in the same transaction as their audit event.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from covidet import DISCLAIMER
from covidet.api.auth import RadiologistUser, audit_in, record_audit
from covidet.api.deps import DatabaseDep, SettingsDep, StoreDep
from covidet.api.reading_room import announce
from covidet.api.schemas import (
    AUTH_ERRORS,
    JSON_NUMBER,
    MAX_ID,
    UNSAFE_ERRORS,
    IdPath,
    Limit,
    Offset,
    OptionalIdQuery,
    PageMeta,
    TextBody,
    error_responses,
)
from covidet.domain import Label
from covidet.store import review_queries as rq
from covidet.store.models import Review, ReviewAction, ReviewStatus

__all__ = [
    "ReviewCreate",
    "ReviewFindingIn",
    "ReviewFindingPublic",
    "ReviewPublic",
    "ReviewUpdate",
    "ReviewsPublic",
    "review_public",
    "router",
]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/reviews", tags=["reviews"])

#: A coordinate: finite, and far beyond any X-ray's size (the image bounds are checked later). Like every
#: number of a request body, a JSON number, never a string or a boolean.
Coordinate = Annotated[float, Field(ge=-1e7, le=1e7, allow_inf_nan=False), JSON_NUMBER]


class ReviewFindingIn(BaseModel):
    """One action. ``confirm``, ``reject`` and ``delete`` name an AI finding (``source_finding_id``) and
    take no label or box; ``relabel`` names one and gives the new ``label`` (and optionally a corrected
    ``box``); ``add`` gives a ``label`` and a ``box`` ``[x1, y1, x2, y2]`` in original-image pixels."""

    model_config = ConfigDict(extra="forbid")

    action: ReviewAction
    source_finding_id: Annotated[int, Field(ge=1, le=MAX_ID), JSON_NUMBER] | None = None
    label: Label | None = None
    box: list[Coordinate] | None = Field(None, min_length=4, max_length=4)

    def to_action(self) -> rq.FindingAction:
        return rq.FindingAction(
            action=self.action.value,
            source_finding_id=self.source_finding_id,
            label=self.label.value if self.label else None,
            box=tuple(self.box) if self.box is not None else None,  # type: ignore[arg-type]
        )


class ReviewCreate(BaseModel):
    """A new draft of the image's newest AI result."""

    model_config = ConfigDict(extra="forbid")

    image_id: Annotated[int, Field(ge=1, le=MAX_ID), JSON_NUMBER]
    label: Label | None = Field(None, description="image-level conclusion; required to sign")
    comment: TextBody | None = None
    findings: list[ReviewFindingIn] = Field(default_factory=list, max_length=500)


class ReviewUpdate(BaseModel):
    """Changes to a draft: only the fields sent are changed; ``findings`` replaces all actions."""

    model_config = ConfigDict(extra="forbid")

    label: Label | None = None
    comment: TextBody | None = None
    findings: list[ReviewFindingIn] | None = Field(None, max_length=500)


class ReviewerRef(BaseModel):
    id: int
    username: str


class ReviewFindingPublic(BaseModel):
    """A stored action; ``label`` and ``box`` are the result (a copy of the AI's for confirm, reject
    and delete)."""

    id: int
    action: str
    source_finding_id: int | None
    label: str | None
    box: list[float] | None


class ReviewPublic(BaseModel):
    id: int
    image_id: int
    inference_id: int | None = Field(description="the AI result reviewed; null when there was none")
    reviewer: ReviewerRef
    status: str
    label: str | None
    comment: str | None
    created_at: datetime
    updated_at: datetime
    signed_at: datetime | None
    amends_review_id: int | None = Field(
        None,
        description="set on an addendum: the reviewer's first signed review (report) of the same image, "
        "which this one amends; null for a report and for drafts",
    )
    findings: list[ReviewFindingPublic]
    disclaimer: str = DISCLAIMER


class ReviewsPublic(PageMeta):
    items: list[ReviewPublic]


def review_public(review: Review) -> ReviewPublic:
    """The public form of a review (read inside its session: reviewer and findings are loaded)."""
    return ReviewPublic(
        id=review.id,
        image_id=review.image_id,
        inference_id=review.inference_id,
        reviewer=ReviewerRef(id=review.reviewer.id, username=review.reviewer.username),
        status=review.status,
        label=review.label,
        comment=review.comment,
        created_at=review.created_at,
        updated_at=review.updated_at,
        signed_at=review.signed_at,
        amends_review_id=review.amends_review_id,
        findings=[
            ReviewFindingPublic(
                id=f.id,
                action=f.action,
                source_finding_id=f.source_finding_id,
                label=f.label,
                box=[f.x1, f.y1, f.x2, f.y2] if f.x1 is not None else None,
            )
            for f in review.findings
        ],
    )


_CHANGE_ERRORS = UNSAFE_ERRORS | error_responses(404, 409)


@router.get("", response_model=ReviewsPublic, responses=AUTH_ERRORS)
def list_reviews(
    request: Request,
    user: RadiologistUser,
    db: DatabaseDep,
    image_id: OptionalIdQuery = None,
    status_: Annotated[ReviewStatus | None, Query(alias="status")] = None,
    reviewer_id: OptionalIdQuery = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> ReviewsPublic:
    """Reviews, newest first, filtered by image, status or reviewer."""
    with db.session() as session:
        rows, total = rq.list_reviews(
            session,
            image_id=image_id,
            status=status_.value if status_ else None,
            reviewer_id=reviewer_id,
            limit=limit,
            offset=offset,
        )
        items = [review_public(r) for r in rows]
    record_audit(
        db,
        request,
        "read.reviews",
        user=user,
        object_type="image" if image_id else None,
        object_id=image_id,
        details={"review_ids": [r.id for r in items], "total": total},
    )
    return ReviewsPublic(items=items, total=total, limit=limit, offset=offset)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ReviewPublic,
    responses=_CHANGE_ERRORS,
)
def create_review(
    request: Request, body: ReviewCreate, user: RadiologistUser, db: DatabaseDep
) -> ReviewPublic:
    """Start a draft review of an image (on its newest successful AI result)."""
    with db.session(write=True) as session:
        review = rq.create_review(
            session,
            image_id=body.image_id,
            reviewer_id=user.id,
            label=body.label.value if body.label else None,
            comment=body.comment,
            actions=[f.to_action() for f in body.findings],
        )
        audit_in(
            session,
            request,
            "review.create",
            user=user,
            object_type="review",
            object_id=review.id,
            details={
                "image_id": review.image_id,
                "inference_id": review.inference_id,
                "actions": [f.action for f in review.findings],
            },
        )
        # get_review's SELECT flushes the review and its audit event first (autoflush).
        answer = review_public(rq.get_review(session, review.id))  # type: ignore[arg-type]
    logger.info("review %d of image %d created by %s", answer.id, answer.image_id, user.username)
    return answer


@router.get("/{review_id}", response_model=ReviewPublic, responses=AUTH_ERRORS | error_responses(404))
def get_review(request: Request, review_id: IdPath, user: RadiologistUser, db: DatabaseDep) -> ReviewPublic:
    """One review with its actions."""
    with db.session() as session:
        review = rq.get_review(session, review_id)
        if review is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no review with id {review_id}")
        answer = review_public(review)
    record_audit(
        db,
        request,
        "read.review",
        user=user,
        object_type="review",
        object_id=review_id,
        details={"image_id": answer.image_id},
    )
    return answer


@router.patch("/{review_id}", response_model=ReviewPublic, responses=_CHANGE_ERRORS)
def update_review(
    request: Request, review_id: IdPath, body: ReviewUpdate, user: RadiologistUser, db: DatabaseDep
) -> ReviewPublic:
    """Change one's own draft (409 once signed)."""
    sent = body.model_fields_set
    with db.session(write=True) as session:
        review = rq.update_review(
            session,
            review_id,
            reviewer_id=user.id,
            label=body.label.value if body.label else None,
            comment=body.comment,
            actions=[f.to_action() for f in body.findings or ()],
            fields=tuple(sent),
        )
        audit_in(
            session,
            request,
            "review.update",
            user=user,
            object_type="review",
            object_id=review_id,
            details={"image_id": review.image_id, "fields": sorted(sent)},
        )
        # rq.update_review flushed the review: expire it so that get_review reads it back as stored
        # (its SELECT flushes the audit event first, autoflush).
        session.expire(review)
        answer = review_public(rq.get_review(session, review_id))  # type: ignore[arg-type]
    return answer


@router.post("/{review_id}/sign", response_model=ReviewPublic, responses=_CHANGE_ERRORS)
def sign_review(
    request: Request,
    review_id: IdPath,
    user: RadiologistUser,
    db: DatabaseDep,
    store: StoreDep,
    settings: SettingsDep,
) -> ReviewPublic:
    """Sign one's own draft: it becomes final and immutable. 422 without an image-level label.

    Once signed, the review's DICOM SR (referring to the AI SR, and to the amended review's SR for an
    addendum) is kept in the study and sent to the configured PACS; that never fails the signature."""
    with db.session(write=True) as session:
        review = rq.sign_review(session, review_id, reviewer_id=user.id)
        audit_in(
            session,
            request,
            "review.sign",
            user=user,
            object_type="review",
            object_id=review_id,
            details={
                "image_id": review.image_id,
                "label": review.label,
                "actions": [f.action for f in review.findings],
                "amends_review_id": review.amends_review_id,
                "kind": "addendum" if review.amends_review_id else "report",
            },
        )
        answer = review_public(review)
    # Open worklists refresh: the review state changed, and the study's claim may be released.
    announce(request.app, {"type": "reviewed", "image_id": answer.image_id, "review_id": review_id})
    logger.info(
        "review %d of image %d signed by %s%s",
        review_id,
        answer.image_id,
        user.username,
        f" (addendum to review {answer.amends_review_id})" if answer.amends_review_id else "",
    )
    _publish_sr(db, store, settings, review_id)
    return answer


def _publish_sr(db: DatabaseDep, store: StoreDep, settings: SettingsDep, review_id: int) -> None:
    from covidet.archive import publish_review_sr

    try:
        publish_review_sr(db, store, settings, review_id)
    except Exception:  # the signature is committed; the SR can be made again (covidet report)
        logger.exception("could not keep the SR of signed review %d", review_id)

"""Reviews as the image viewer shows them, and what the viewer adds for the reading room: the claim
of the study, the reader's own report of the image (a further signature is an addendum to it), and
the names and explanations of the scores.

Contract: plain values for the templates and the page's embedded JSON (no ORM objects escape);
read inside the caller's session.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypedDict

from sqlalchemy.orm import Session

from covidet.api.reading_room import AI_SCORE_NAME, BOX_SCORE_HELP, ai_score_help
from covidet.store import reading_room as rr
from covidet.store.claims import ClaimInfo
from covidet.store.models import Image, Review

__all__ = ["ReadingRoomView", "ReviewFindingView", "ReviewView", "reading_room_view", "review_view"]


class ReviewFindingView(TypedDict):
    """A finding of a review: what the reviewer did to an AI box (or drew), with the box if any."""

    action: str
    source_finding_id: int | None
    label: str | None
    box: list[float | None] | None


class ReviewView(TypedDict):
    """A review of an image (draft or signed)."""

    id: int
    status: str
    reviewer_id: int
    reviewer: str
    label: str | None
    comment: str | None
    inference_id: int | None
    updated_at: datetime
    signed_at: datetime | None
    amends_review_id: int | None
    findings: list[ReviewFindingView]


class ReadingRoomView(TypedDict):
    """The viewer's reading-room values (see :func:`reading_room_view`)."""

    claim: ClaimInfo | None
    my_report: int | None
    score_name: str
    score_help: Callable[[str | None, str | None], str]
    box_help: str


def review_view(review: Review) -> ReviewView:
    """``review`` (reviewer and findings loaded) as plain values."""
    return {
        "id": review.id,
        "status": review.status,
        "reviewer_id": review.reviewer_id,
        "reviewer": review.reviewer.username,
        "label": review.label,
        "comment": review.comment,
        "inference_id": review.inference_id,
        "updated_at": review.updated_at,
        "signed_at": review.signed_at,
        "amends_review_id": review.amends_review_id,
        "findings": [
            {
                "action": f.action,
                "source_finding_id": f.source_finding_id,
                "label": f.label,
                "box": [f.x1, f.y1, f.x2, f.y2] if f.x1 is not None else None,
            }
            for f in review.findings
        ],
    }


def reading_room_view(
    session: Session, image: Image, reviews: list[ReviewView], user_id: int
) -> ReadingRoomView:
    """Template values of the viewer: ``claim`` (who reads the study, or ``None``), ``my_report`` (the
    id of this reader's signed report of the image, or ``None``), and the score names and help."""
    return {
        "claim": rr.get_claim(session, image.study_id),
        "my_report": next(
            (
                r["id"]
                for r in reviews
                if r["status"] == "signed" and r["reviewer_id"] == user_id and r["amends_review_id"] is None
            ),
            None,
        ),
        "score_name": AI_SCORE_NAME,
        "score_help": ai_score_help,
        "box_help": BOX_SCORE_HELP,
    }

"""What the viewer adds for the reading room: the claim of the study, the reader's own report of the
image (a further signature is an addendum to it), and the names and explanations of the scores."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from covidet.api.reading_room import AI_SCORE_NAME, BOX_SCORE_HELP, ai_score_help
from covidet.store import reading_room as rr
from covidet.store.models import Image

__all__ = ["reading_room_view"]


def reading_room_view(
    session: Session, image: Image, reviews: list[dict[str, Any]], user_id: int
) -> dict[str, Any]:
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

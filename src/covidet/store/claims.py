"""Claims of studies: a radiologist reading a study now ("being read by"), at most one per study.

A claim is taken explicitly (:func:`claim_study`, or the next case of
:func:`covidet.store.reading_room.next_study`), released by its holder or an admin
(:func:`release_claim`), and released by itself when every image of the study has a signed review
(:func:`covidet.store.review_rules.release_claim_when_read`). Functions take a session and never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from covidet.store.models import Study, StudyClaim, User, utcnow
from covidet.store.review_queries import Conflict, Forbidden, NotFound

__all__ = ["ClaimInfo", "claim_study", "get_claim", "release_claim", "study_claims"]


@dataclass(frozen=True, slots=True)
class ClaimInfo:
    """Who is reading a study, since when."""

    study_id: int
    user_id: int
    username: str
    claimed_at: datetime


def study_claims(session: Session, study_ids: Sequence[int]) -> dict[int, ClaimInfo]:
    """The claims of these studies (studies nobody reads are absent)."""
    return {
        claim.study_id: ClaimInfo(claim.study_id, claim.user_id, username, claim.claimed_at)
        for claim, username in session.execute(
            select(StudyClaim, User.username)
            .join(User, StudyClaim.user_id == User.id)
            .where(StudyClaim.study_id.in_(list(study_ids)))
        )
    }


def get_claim(session: Session, study_id: int) -> ClaimInfo | None:
    """Who reads the study now, or ``None``."""
    return study_claims(session, [study_id]).get(study_id)


def claim_study(session: Session, study_id: int, *, user_id: int, now: datetime | None = None) -> ClaimInfo:
    """Claim a study for ``user_id`` (idempotent for its holder).

    Raises:
        NotFound: no such study.
        Conflict: another radiologist reads it (they or an admin must release it first).
    """
    if session.get(Study, study_id) is None:
        raise NotFound(f"no study with id {study_id}")
    held = get_claim(session, study_id)
    if held is None:
        try:
            with session.begin_nested():  # two claims at once: the unique study_id lets one through
                session.add(StudyClaim(study_id=study_id, user_id=user_id, claimed_at=now or utcnow()))
        except IntegrityError:
            pass
        held = get_claim(session, study_id)
    assert held is not None
    if held.user_id != user_id:
        raise Conflict(
            f"study {study_id} is being read by {held.username} since "
            f"{held.claimed_at.strftime('%Y-%m-%d %H:%M UTC')}"
        )
    return held


def release_claim(session: Session, study_id: int, *, user_id: int, admin: bool = False) -> ClaimInfo | None:
    """Release the claim of a study; returns the claim released (``None``: there was none).

    Raises:
        NotFound: no such study.
        Forbidden: another radiologist's claim, and the caller is not an admin.
    """
    if session.get(Study, study_id) is None:
        raise NotFound(f"no study with id {study_id}")
    held = get_claim(session, study_id)
    if held is None:
        return None
    if held.user_id != user_id and not admin:
        raise Forbidden(
            f"study {study_id} is being read by {held.username}: only they or an admin may release it"
        )
    session.execute(delete(StudyClaim).where(StudyClaim.study_id == study_id))
    return held

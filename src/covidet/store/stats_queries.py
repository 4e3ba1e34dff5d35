"""How far the analysis has got: images counted by pipeline status and by current triage priority.

Read-only; the function takes a session and never commits. ``covidet demo`` polls it to say when every
image it sent has been assessed (``covidet stats`` has its own, wider counts in
:func:`covidet.store.queries.counts`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from covidet.store.models import Image, ImageStatus

__all__ = ["AssessmentProgress", "assessment_progress"]


@dataclass(frozen=True, slots=True)
class AssessmentProgress:
    """Images by status (``queued`` / ``analysed`` / ``failed``) and by current priority (``urgent`` /
    ``high`` / ``routine``; images without a priority yet are not in ``by_priority``). A status or
    priority that no image has is absent from its mapping; :meth:`status` and :meth:`priority` read 0."""

    by_status: dict[str, int]
    by_priority: dict[str, int]

    @property
    def images(self) -> int:
        """Every image in the database, whatever its status."""
        return sum(self.by_status.values())

    def status(self, status: ImageStatus | str) -> int:
        """How many images have ``status``."""
        return self.by_status.get(str(status), 0)

    def priority(self, priority: str) -> int:
        """How many images have ``priority`` as their current triage priority."""
        return self.by_priority.get(priority, 0)

    @property
    def triaged(self) -> int:
        """Images with a priority (an image is marked analysed a moment before its triage is stored)."""
        return sum(self.by_priority.values())


def assessment_progress(session: Session) -> AssessmentProgress:
    """Count the images by status and by current priority, in two grouped queries."""
    by_status = session.execute(select(Image.status, func.count()).group_by(Image.status)).all()
    by_priority = session.execute(
        select(Image.priority, func.count()).where(Image.priority.is_not(None)).group_by(Image.priority)
    ).all()
    return AssessmentProgress(
        by_status={str(status): int(count) for status, count in by_status},
        by_priority={str(priority): int(count) for priority, count in by_priority},
    )

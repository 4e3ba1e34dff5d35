"""``GET /api/v1/worklist``: the images a radiologist should read, most urgent first.

Order: priority urgent > high > routine > not triaged yet, then arrival (``received_at`` ascending:
within a priority, who waited longest comes first). Each row carries the AI result (label, top score,
model, disclaimer), the patient's latest vital signs with their NEWS2 flags, and the review state.
"""

from __future__ import annotations

import logging
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from covidet import DISCLAIMER
from covidet.api.auth import RadiologistUser, record_audit
from covidet.api.deps import DatabaseDep
from covidet.api.schemas import (
    AUTH_ERRORS,
    AiPublic,
    Limit,
    Offset,
    PageMeta,
    PatientRef,
    ReviewStatePublic,
    SearchText,
    VitalValuePublic,
    ai_public,
    vitals_public,
)
from covidet.store import review_queries as rq

__all__ = [
    "PriorityFilter",
    "StatusFilter",
    "WorklistItemPublic",
    "WorklistPublic",
    "router",
    "worklist_item",
]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/worklist", tags=["worklist"])


class PriorityFilter(StrEnum):
    URGENT = "urgent"
    HIGH = "high"
    ROUTINE = "routine"
    NONE = "none"  # not triaged yet


class StatusFilter(StrEnum):
    QUEUED = "queued"
    ANALYSED = "analysed"
    FAILED = "failed"


class WorklistItemPublic(BaseModel):
    """One image to read. ``reasons`` are the newest triage's; ``vitals`` maps each measured parameter
    (spo2_percent, respiratory_rate_per_min, temperature_c, heart_rate_per_min, systolic_bp_mmhg) to
    its latest value; ``vitals_abnormal`` is true when any of them scores in NEWS2."""

    image_id: int
    study_id: int
    patient: PatientRef
    received_at: datetime
    status: str
    priority: str | None
    priority_updated_at: datetime | None
    reasons: list[str]
    ai: AiPublic | None
    disclaimer: str = DISCLAIMER
    vitals: dict[str, VitalValuePublic]
    vitals_abnormal: bool
    review: ReviewStatePublic


class WorklistPublic(PageMeta):
    items: list[WorklistItemPublic]


def worklist_item(row: rq.WorklistRow) -> WorklistItemPublic:
    """The public form of a :class:`~covidet.store.review_queries.WorklistRow` (the web app reuses it)."""
    vitals = vitals_public(row.vitals)
    return WorklistItemPublic(
        image_id=row.image_id,
        study_id=row.study_id,
        patient=PatientRef(id=row.patient_id, patient_key=row.patient_key, name=row.patient_name),
        received_at=row.received_at,
        status=row.status,
        priority=row.priority,
        priority_updated_at=row.priority_updated_at,
        reasons=row.reasons,
        ai=ai_public(row.ai),
        vitals=vitals,
        vitals_abnormal=any(v.abnormal for v in vitals.values()),
        review=ReviewStatePublic(
            state=row.review.state,
            review_id=row.review.review_id,
            reviewer=row.review.reviewer,
            label=row.review.label,
            signed_at=row.review.signed_at,
        ),
    )


@router.get("", response_model=WorklistPublic, responses=AUTH_ERRORS)
def get_worklist(
    request: Request,
    user: RadiologistUser,
    db: DatabaseDep,
    priority: Annotated[list[PriorityFilter] | None, Query(max_length=4, description="repeatable")] = None,
    status: Annotated[list[StatusFilter] | None, Query(max_length=3, description="repeatable")] = None,
    reviewed: Annotated[bool | None, Query(description="true: has a signed review; false: has none")] = None,
    patient: SearchText = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> WorklistPublic:
    """The worklist, most urgent and longest waiting first (audited as ``read.worklist``)."""
    with db.session() as session:
        rows, total = rq.worklist(
            session,
            priorities=[p.value for p in priority] if priority else None,
            statuses=[s.value for s in status] if status else None,
            reviewed=reviewed,
            patient=patient,
            limit=limit,
            offset=offset,
        )
    items = [worklist_item(row) for row in rows]
    record_audit(
        db,
        request,
        "read.worklist",
        user=user,
        details={
            "image_ids": [item.image_id for item in items],
            "filters": {
                "priority": [p.value for p in priority or ()],
                "status": [s.value for s in status or ()],
                "reviewed": reviewed,
                "patient": patient,
            },
            "total": total,
        },
    )
    return WorklistPublic(items=items, total=total, limit=limit, offset=offset)

"""``GET /api/v1/worklist``: the images a radiologist should read, most urgent first.

Order: priority urgent > high > routine > not triaged yet, then arrival (``received_at`` ascending:
within a priority, who waited longest comes first). Each row carries the AI result (label, top score,
model, disclaimer), the patient's latest vital signs with their NEWS2 flags, and the review state.

``GET /api/v1/worklist/studies`` is the same worklist **by study** (one row per study, its images
listed inside; sortable, filterable), the reading room's view; ``/worklist`` keeps its shape for the
scripts that use it. ``POST``/``DELETE /worklist/studies/{id}/claim`` claim and release a study
("being read by"); ``POST /worklist/next`` claims and returns the next study to read.
"""

from __future__ import annotations

import logging
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel

from covidet import DISCLAIMER
from covidet.api import reading_room
from covidet.api.auth import RadiologistUser, record_audit
from covidet.api.deps import DatabaseDep, StoreDep
from covidet.api.reading_room import ClaimPublic, StudyPublic, StudyWorklistPublic, study_public
from covidet.api.schemas import (
    AUTH_ERRORS,
    UNSAFE_ERRORS,
    AiPublic,
    IdPath,
    Limit,
    Offset,
    PageMeta,
    PatientRef,
    ReviewStatePublic,
    SearchText,
    VitalValuePublic,
    ai_public,
    error_responses,
    vitals_public,
)
from covidet.store import reading_room as rr
from covidet.store import review_queries as rq

__all__ = [
    "NextCasePublic",
    "PriorityFilter",
    "StatusFilter",
    "StudySort",
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


class StudySort(StrEnum):
    PRIORITY = "priority"  # most urgent, then longest waiting
    WAITING = "waiting"
    PATIENT = "patient"
    ACCESSION = "accession"


class SortOrder(StrEnum):
    ASC = "asc"
    DESC = "desc"


class NextCasePublic(BaseModel):
    """The study claimed for you and the image to open first; both null when nothing is left."""

    study: StudyPublic | None
    image_id: int | None


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


@router.get("/studies", response_model=StudyWorklistPublic, responses=AUTH_ERRORS)
def get_study_worklist(
    request: Request,
    user: RadiologistUser,
    db: DatabaseDep,
    store: StoreDep,
    priority: Annotated[
        list[PriorityFilter] | None, Query(max_length=4, description="the study's priority; repeatable")
    ] = None,
    status: Annotated[
        list[StatusFilter] | None, Query(max_length=3, description="some image has it; repeatable")
    ] = None,
    reviewed: Annotated[
        bool | None, Query(description="true: every image has a signed review; false: some has none")
    ] = None,
    patient: SearchText = None,
    q: Annotated[SearchText, Query(description="substring of the accession number or description")] = None,
    sort: StudySort = StudySort.PRIORITY,
    order: SortOrder = SortOrder.ASC,
    limit: Limit = 50,
    offset: Offset = 0,
) -> StudyWorklistPublic:
    """The worklist by study: one row per study with its images, the most urgent priority and its
    deciding reason, accession, description, waiting time, claim (audited as ``read.worklist``)."""
    with db.session() as session:
        rows, total = rr.study_worklist(
            session,
            priorities=[p.value for p in priority] if priority else None,
            statuses=[s.value for s in status] if status else None,
            reviewed=reviewed,
            patient=patient,
            text=q,
            sort=sort.value,
            descending=order is SortOrder.DESC,
            limit=limit,
            offset=offset,
        )
    items = [study_public(row, store=store) for row in rows]
    record_audit(
        db,
        request,
        "read.worklist",
        user=user,
        details={
            "by": "study",
            "study_ids": [item.study_id for item in items],
            "image_ids": [i.image_id for item in items for i in item.images],
            "total": total,
        },
    )
    return StudyWorklistPublic(items=items, total=total, limit=limit, offset=offset)


_CLAIM_ERRORS = UNSAFE_ERRORS | error_responses(404, 409)


@router.post("/studies/{study_id}/claim", response_model=ClaimPublic, responses=_CLAIM_ERRORS)
def claim_study(request: Request, study_id: IdPath, user: RadiologistUser, db: DatabaseDep) -> ClaimPublic:
    """Claim a study: others see it is being read by you. 409 while someone else holds it."""
    held = reading_room.claim(db, request, user, study_id, via="api")
    return ClaimPublic(user_id=held.user_id, username=held.username, claimed_at=held.claimed_at)


@router.delete(
    "/studies/{study_id}/claim",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=UNSAFE_ERRORS | error_responses(404),
)
def release_study(request: Request, study_id: IdPath, user: RadiologistUser, db: DatabaseDep) -> Response:
    """Release a study's claim: your own, or anyone's as an admin (403 otherwise). Signing the last
    unread image of a study releases it by itself."""
    reading_room.release(db, request, user, study_id, via="api")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/next", response_model=NextCasePublic, responses=UNSAFE_ERRORS)
def next_case(request: Request, user: RadiologistUser, db: DatabaseDep, store: StoreDep) -> NextCasePublic:
    """Claim the next study to read (most urgent, then longest waiting, not read by someone else) and
    name its first unread image; nulls when nothing is left."""
    row = reading_room.take_next(db, request, user, via="api")
    if row is None:
        return NextCasePublic(study=None, image_id=None)
    study = study_public(row, store=store)
    return NextCasePublic(study=study, image_id=(study.unread_image_ids or [study.deciding_image_id])[0])

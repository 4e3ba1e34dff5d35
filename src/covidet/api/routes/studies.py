"""``/api/v1/studies``: DICOM studies (or the synthetic study of a PNG/JPEG upload) with their images.

Every read is audited (``read.studies``, ``read.study``).
"""

from __future__ import annotations

import logging
from datetime import datetime

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel

from covidet.api.auth import RadiologistUser, record_audit
from covidet.api.deps import DatabaseDep
from covidet.api.schemas import (
    AUTH_ERRORS,
    IdPath,
    Limit,
    Offset,
    PageMeta,
    PatientRef,
    SearchText,
    error_responses,
)
from covidet.store import review_queries as rq
from covidet.store.models import Image

__all__ = ["ImageSummaryPublic", "StudiesPublic", "StudyPublic", "StudySummaryPublic", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/studies", tags=["studies"])


class ImageSummaryPublic(BaseModel):
    """An image as a study lists it."""

    id: int
    sop_instance_uid: str
    media_type: str
    modality: str | None
    rows: int | None
    columns: int | None
    received_at: datetime
    status: str
    priority: str | None


class _StudyFields(BaseModel):
    """What a study shows in a list and on its own (the JSON keeps these first, in this order)."""

    id: int
    study_instance_uid: str
    accession_number: str | None
    description: str | None
    study_datetime: datetime | None
    created_at: datetime
    patient: PatientRef


class StudySummaryPublic(_StudyFields):
    image_count: int


class StudiesPublic(PageMeta):
    items: list[StudySummaryPublic]


class StudyPublic(_StudyFields):
    images: list[ImageSummaryPublic]


def image_summary(image: Image) -> ImageSummaryPublic:
    return ImageSummaryPublic(
        id=image.id,
        sop_instance_uid=image.sop_instance_uid,
        media_type=image.media_type,
        modality=image.modality,
        rows=image.rows,
        columns=image.columns,
        received_at=image.received_at,
        status=image.status,
        priority=image.priority,
    )


@router.get("", response_model=StudiesPublic, responses=AUTH_ERRORS)
def list_studies(
    request: Request,
    user: RadiologistUser,
    db: DatabaseDep,
    patient: SearchText = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> StudiesPublic:
    """Studies, newest first; ``patient`` filters by patient key or name."""
    with db.session() as session:
        rows, total = rq.list_studies(session, patient=patient, limit=limit, offset=offset)
    items = [
        StudySummaryPublic(
            id=r.id,
            study_instance_uid=r.study_instance_uid,
            accession_number=r.accession_number,
            description=r.description,
            study_datetime=r.study_datetime,
            created_at=r.created_at,
            patient=PatientRef(id=r.patient_id, patient_key=r.patient_key, name=r.patient_name),
            image_count=r.image_count,
        )
        for r in rows
    ]
    record_audit(
        db,
        request,
        "read.studies",
        user=user,
        details={"study_ids": [item.id for item in items], "patient": patient, "total": total},
    )
    return StudiesPublic(items=items, total=total, limit=limit, offset=offset)


@router.get("/{study_id}", response_model=StudyPublic, responses=AUTH_ERRORS | error_responses(404))
def get_study(request: Request, study_id: IdPath, user: RadiologistUser, db: DatabaseDep) -> StudyPublic:
    """One study, its patient and its images (oldest first)."""
    with db.session() as session:
        study = rq.get_study(session, study_id)
        if study is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no study with id {study_id}")
        body = StudyPublic(
            id=study.id,
            study_instance_uid=study.study_instance_uid,
            accession_number=study.accession_number,
            description=study.description,
            study_datetime=study.study_datetime,
            created_at=study.created_at,
            patient=PatientRef.of(study.patient),
            images=[image_summary(i) for i in sorted(study.images, key=lambda i: (i.received_at, i.id))],
        )
    record_audit(
        db,
        request,
        "read.study",
        user=user,
        object_type="study",
        object_id=study_id,
        details={"patient_id": body.patient.id},
    )
    return body

"""``GET /api/v1/patients/{patient_id}/vitals``: a patient's vital signs over a time range (the trend
beside the viewer). Audited as ``read.vitals``."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel

from covidet.api.auth import RadiologistUser, record_audit
from covidet.api.deps import DatabaseDep
from covidet.api.schemas import (
    AUTH_ERRORS,
    IdPath,
    IsoDateTime,
    PatientRef,
    VitalValuePublic,
    as_utc,
    error_responses,
    vitals_public,
)
from covidet.store import review_queries as rq

__all__ = ["VitalSignPublic", "VitalsPublic", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/patients", tags=["vitals"])


class VitalSignPublic(BaseModel):
    """One set of bedside measurements (absent parameters are null)."""

    id: int
    device_id: int | None
    measured_at: datetime
    received_at: datetime
    spo2_percent: float | None
    temperature_c: float | None
    heart_rate_per_min: float | None
    respiratory_rate_per_min: float | None
    systolic_bp_mmhg: float | None


class VitalsPublic(BaseModel):
    """``items``: the newest ``limit`` readings in ``[since, until]``, oldest first; ``total``: how many
    the range holds; ``latest``: each parameter's latest value ever, with its NEWS2 flag."""

    patient: PatientRef
    since: datetime | None
    until: datetime | None
    total: int
    items: list[VitalSignPublic]
    latest: dict[str, VitalValuePublic]


@router.get("/{patient_id}/vitals", response_model=VitalsPublic, responses=AUTH_ERRORS | error_responses(404))
def get_vitals(
    request: Request,
    patient_id: IdPath,
    user: RadiologistUser,
    db: DatabaseDep,
    since: Annotated[IsoDateTime | None, Query(description="ISO 8601; naive times are UTC")] = None,
    until: Annotated[IsoDateTime | None, Query(description="ISO 8601; naive times are UTC")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> VitalsPublic:
    """A patient's readings in a time range, for the trend chart."""
    start, end = as_utc(since, "since"), as_utc(until, "until")
    if start is not None and end is not None and start > end:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="since must not be after until")
    with db.session() as session:
        patient = rq.get_patient(session, patient_id)
        if patient is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no patient with id {patient_id}")
        rows, total = rq.patient_vitals(session, patient_id, since=start, until=end, limit=limit)
        body = VitalsPublic(
            patient=PatientRef.of(patient),
            since=start,
            until=end,
            total=total,
            items=[
                VitalSignPublic(
                    id=r.id,
                    device_id=r.device_id,
                    measured_at=r.measured_at,
                    received_at=r.received_at,
                    spo2_percent=r.spo2_percent,
                    temperature_c=r.temperature_c,
                    heart_rate_per_min=r.heart_rate_per_min,
                    respiratory_rate_per_min=r.respiratory_rate_per_min,
                    systolic_bp_mmhg=r.systolic_bp_mmhg,
                )
                for r in rows
            ],
            latest=vitals_public(rq.latest_vitals(session, [patient_id]).get(patient_id, {})),
        )
    record_audit(
        db,
        request,
        "read.vitals",
        user=user,
        object_type="patient",
        object_id=patient_id,
        details={
            "since": start.isoformat() if start else None,
            "until": end.isoformat() if end else None,
            "count": len(body.items),
        },
    )
    return body

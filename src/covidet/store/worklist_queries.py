"""The worklist (images by priority, then by arrival, with their AI result, triage reasons, review
state and the patient's latest vital signs) and the vital-sign queries behind it.

Functions take a session and never commit; see :mod:`covidet.store.review_queries`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session, selectinload

from covidet.store.models import (
    FindingRecord,
    Image,
    Inference,
    InferenceStatus,
    Patient,
    Review,
    ReviewStatus,
    Study,
    TriageRecord,
    User,
    VitalSignRecord,
)
from covidet.store.query_common import NotFound, _page, patient_matches, signed_review_exists

__all__ = [
    "PRIORITY_ORDER",
    "VITAL_PARAMETERS",
    "AiSummary",
    "ReviewState",
    "VitalValue",
    "WorklistRow",
    "get_patient",
    "latest_vitals",
    "patient_vitals",
    "worklist",
]


#: Worklist order of priorities; images not yet triaged come after ``routine``.
PRIORITY_ORDER: tuple[str, ...] = ("urgent", "high", "routine")
#: The vital-sign columns, in the order NEWS2 charts them (respiratory first).
VITAL_PARAMETERS: tuple[str, ...] = (
    "spo2_percent",
    "respiratory_rate_per_min",
    "temperature_c",
    "heart_rate_per_min",
    "systolic_bp_mmhg",
)


# ------------------------------------------------------------------------------------------ vitals


@dataclass(frozen=True, slots=True)
class VitalValue:
    """The latest value of one vital sign, as stored (``value`` in the parameter's unit). Its NEWS2
    score is the presenters' to compute (:func:`covidet.assessment.triage.news2_of_reading`): the
    store keeps rows and computes no clinical scores."""

    parameter: str
    value: float
    measured_at: datetime


def latest_vitals(session: Session, patient_ids: Sequence[int]) -> dict[int, dict[str, VitalValue]]:
    """Per patient, the most recent value of each vital sign (a reading may lack some parameters, so
    each parameter is looked up on its own). Patients without readings are absent."""
    result: dict[int, dict[str, VitalValue]] = {}
    if not patient_ids:
        return result
    for parameter in VITAL_PARAMETERS:
        column = getattr(VitalSignRecord, parameter)
        rank = (
            func.row_number()
            .over(
                partition_by=VitalSignRecord.patient_id,
                order_by=(VitalSignRecord.measured_at.desc(), VitalSignRecord.id.desc()),
            )
            .label("rank")
        )
        ranked = (
            select(VitalSignRecord.patient_id, column.label("value"), VitalSignRecord.measured_at, rank)
            .where(VitalSignRecord.patient_id.in_(patient_ids), column.is_not(None))
            .subquery()
        )
        rows = session.execute(
            select(ranked.c.patient_id, ranked.c.value, ranked.c.measured_at).where(ranked.c.rank == 1)
        )
        for patient_id, value, measured_at in rows:
            result.setdefault(patient_id, {})[parameter] = VitalValue(parameter, float(value), measured_at)
    return result


def patient_vitals(
    session: Session,
    patient_id: int,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 500,
) -> tuple[list[VitalSignRecord], int]:
    """The newest ``limit`` readings of a patient with ``since <= measured_at <= until``, returned oldest
    first (ready to plot), and how many readings the range holds.

    Raises:
        NotFound: no such patient.
    """
    if session.get(Patient, patient_id) is None:
        raise NotFound(f"no patient with id {patient_id}")
    conditions = [VitalSignRecord.patient_id == patient_id]
    if since is not None:
        conditions.append(VitalSignRecord.measured_at >= since)
    if until is not None:
        conditions.append(VitalSignRecord.measured_at <= until)
    total = session.scalar(select(func.count()).select_from(VitalSignRecord).where(*conditions)) or 0
    newest = list(
        session.scalars(
            select(VitalSignRecord)
            .where(*conditions)
            .order_by(VitalSignRecord.measured_at.desc(), VitalSignRecord.id.desc())
            .limit(limit)
        )
    )
    return newest[::-1], int(total)


def get_patient(session: Session, patient_id: int) -> Patient | None:
    return session.get(Patient, patient_id)


# ---------------------------------------------------------------------------------------- worklist


@dataclass(frozen=True, slots=True)
class AiSummary:
    """The newest successful analysis of an image. ``top_score`` is the highest finding score (``None``
    without findings); ``probabilities`` are the image-level class probabilities."""

    inference_id: int
    label: str | None
    top_score: float | None
    probabilities: dict[str, float]
    model_name: str
    model_version: str
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReviewState:
    """``state``: ``signed`` when a signed review exists (the newest is named), else ``draft`` when a
    draft exists, else ``none``."""

    state: str = "none"
    review_id: int | None = None
    reviewer: str | None = None
    label: str | None = None
    signed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class WorklistRow:
    """One image on the worklist, with what a radiologist needs to choose what to read next."""

    image_id: int
    study_id: int
    patient_id: int
    patient_key: str
    patient_name: str | None
    received_at: datetime
    status: str
    priority: str | None
    priority_updated_at: datetime | None
    reasons: list[str]
    ai: AiSummary | None
    vitals: dict[str, VitalValue]
    review: ReviewState


def _priority_rank() -> Any:
    """An image's place in :data:`PRIORITY_ORDER` (0: urgent); not triaged ranks last."""
    return case(
        *((Image.priority == name, index) for index, name in enumerate(PRIORITY_ORDER)),
        else_=len(PRIORITY_ORDER),
    )


def worklist(
    session: Session,
    *,
    priorities: Sequence[str] | None = None,
    statuses: Sequence[str] | None = None,
    reviewed: bool | None = None,
    patient: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[WorklistRow], int]:
    """Images ordered by priority (urgent, high, routine, not triaged) and, within a priority, by
    arrival (``received_at`` ascending: the oldest waiting first), and the total matching.

    Filters: ``priorities`` (``urgent | high | routine | none``, ``none`` = not triaged yet),
    ``statuses`` (``queued | analysed | failed``), ``reviewed`` (``True``: has a signed review,
    ``False``: has none), ``patient`` (case-insensitive substring of the patient key or name).
    """
    statement = (
        select(Image).join(Study, Image.study_id == Study.id).join(Patient, Study.patient_id == Patient.id)
    )
    if priorities:
        named = [p for p in priorities if p != "none"]
        conditions = [Image.priority.in_(named)] if named else []
        if "none" in priorities:
            conditions.append(Image.priority.is_(None))
        statement = statement.where(or_(*conditions))
    if statuses:
        statement = statement.where(Image.status.in_(list(statuses)))
    if reviewed is not None:
        signed = signed_review_exists()
        statement = statement.where(signed if reviewed else ~signed)
    if patient:
        statement = statement.where(patient_matches(patient))
    statement = statement.order_by(_priority_rank(), Image.received_at.asc(), Image.id.asc()).options(
        selectinload(Image.study).selectinload(Study.patient)
    )
    images, total = _page(session, statement, limit, offset)
    ids = [image.id for image in images]
    ai = _ai_summaries(session, ids)
    reasons = _latest_reasons(session, ids)
    states = _review_states(session, ids)
    vitals = latest_vitals(session, sorted({image.study.patient_id for image in images}))
    rows = [
        WorklistRow(
            image_id=image.id,
            study_id=image.study_id,
            patient_id=image.study.patient_id,
            patient_key=image.study.patient.patient_key,
            patient_name=image.study.patient.name,
            received_at=image.received_at,
            status=image.status,
            priority=image.priority,
            priority_updated_at=image.priority_updated_at,
            reasons=reasons.get(image.id, []),
            ai=ai.get(image.id),
            vitals=vitals.get(image.study.patient_id, {}),
            review=states.get(image.id, ReviewState()),
        )
        for image in images
    ]
    return rows, total


def _ai_summaries(session: Session, image_ids: Sequence[int]) -> dict[int, AiSummary]:
    if not image_ids:
        return {}
    newest: dict[int, Inference] = {}
    for inference in session.scalars(
        select(Inference)
        .where(Inference.image_id.in_(image_ids), Inference.status == InferenceStatus.SUCCEEDED.value)
        .order_by(Inference.finished_at.asc(), Inference.id.asc())
    ):
        newest[inference.image_id] = inference  # the last one wins
    top = dict(
        session.execute(
            select(FindingRecord.inference_id, func.max(FindingRecord.score))
            .where(FindingRecord.inference_id.in_([i.id for i in newest.values()]))
            .group_by(FindingRecord.inference_id)
        ).all()
    )
    return {
        image_id: AiSummary(
            inference_id=inference.id,
            label=inference.label,
            top_score=float(top[inference.id]) if inference.id in top else None,
            probabilities=dict(inference.probabilities or {}),
            model_name=inference.model_name,
            model_version=inference.model_version,
            finished_at=inference.finished_at,
        )
        for image_id, inference in newest.items()
    }


def _latest_reasons(session: Session, image_ids: Sequence[int]) -> dict[int, list[str]]:
    reasons: dict[int, list[str]] = {}
    if image_ids:
        for image_id, text in session.execute(
            select(TriageRecord.image_id, TriageRecord.reasons)
            .where(TriageRecord.image_id.in_(image_ids))
            .order_by(TriageRecord.computed_at.asc(), TriageRecord.id.asc())
        ):
            reasons[image_id] = list(text or [])
    return reasons


def _review_states(session: Session, image_ids: Sequence[int]) -> dict[int, ReviewState]:
    states: dict[int, ReviewState] = {}
    if not image_ids:
        return states
    rows = session.execute(
        select(Review.image_id, Review.id, Review.status, Review.label, Review.signed_at, User.username)
        .join(User, Review.reviewer_id == User.id)
        .where(Review.image_id.in_(image_ids))
        .order_by(Review.id.asc())
    )
    for image_id, review_id, status, label, signed_at, username in rows:
        current = states.get(image_id)
        if status == ReviewStatus.SIGNED.value or current is None or current.state != "signed":
            states[image_id] = ReviewState(status, review_id, username, label, signed_at)
    return states

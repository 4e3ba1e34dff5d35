"""Studies and images: study lists, one study or image, a patient's other studies, an image's
inferences (and the error of its newest failed one), findings, triage and reviews, and the models
that analysed images.

Functions take a session and never commit; see :mod:`covidet.store.review_queries`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from covidet.store.models import (
    FindingRecord,
    Image,
    Inference,
    InferenceStatus,
    Patient,
    Review,
    Study,
    TriageRecord,
)
from covidet.store.query_common import NotFound, _page, patient_matches

__all__ = [
    "ModelUsage",
    "StudyRow",
    "get_image",
    "get_study",
    "get_study_by_uid",
    "image_findings",
    "image_inferences",
    "image_reviews",
    "latest_failure",
    "latest_inference",
    "latest_triage",
    "list_studies",
    "models_in_use",
    "other_studies",
]

# ----------------------------------------------------------------------------------- studies, images


@dataclass(frozen=True, slots=True)
class StudyRow:
    """A study in a list, with its patient and how many images it has."""

    id: int
    study_instance_uid: str
    accession_number: str | None
    description: str | None
    study_datetime: datetime | None
    created_at: datetime
    patient_id: int
    patient_key: str
    patient_name: str | None
    image_count: int


def list_studies(
    session: Session, *, patient: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[StudyRow], int]:
    """Studies, newest first; ``patient`` filters by substring of the patient key or name."""
    image_count = (
        select(func.count(Image.id)).where(Image.study_id == Study.id).correlate(Study).scalar_subquery()
    )
    statement = select(Study.id).join(Patient, Study.patient_id == Patient.id)
    if patient:
        statement = statement.where(patient_matches(patient))
    ids, total = _page(session, statement.order_by(Study.created_at.desc(), Study.id.desc()), limit, offset)
    if not ids:
        return [], total
    rows = session.execute(
        select(Study, Patient, image_count.label("n"))
        .join(Patient, Study.patient_id == Patient.id)
        .where(Study.id.in_(ids))
        .order_by(Study.created_at.desc(), Study.id.desc())
    )
    return [
        StudyRow(
            study.id,
            study.study_instance_uid,
            study.accession_number,
            study.description,
            study.study_datetime,
            study.created_at,
            patient_row.id,
            patient_row.patient_key,
            patient_row.name,
            int(n or 0),
        )
        for study, patient_row, n in rows
    ], total


def get_study(session: Session, study_id: int) -> Study | None:
    """A study with its patient and images (oldest first) loaded."""
    return session.scalar(
        select(Study)
        .where(Study.id == study_id)
        .options(selectinload(Study.patient), selectinload(Study.images))
    )


def get_study_by_uid(session: Session, study_uid: str) -> Study | None:
    """The study with this Study Instance UID, its patient loaded, or ``None``."""
    return session.scalar(
        select(Study).where(Study.study_instance_uid == study_uid).options(selectinload(Study.patient))
    )


def other_studies(session: Session, patient_id: int, *, exclude_study_id: int) -> list[Study]:
    """The patient's studies but ``exclude_study_id``, newest first: by study date (studies without a
    date last), then by id."""
    return list(
        session.scalars(
            select(Study)
            .where(Study.patient_id == patient_id, Study.id != exclude_study_id)
            .order_by(Study.study_datetime.desc().nulls_last(), Study.id.desc())
        )
    )


def get_image(session: Session, image_id: int) -> Image | None:
    """An image with its study and patient loaded."""
    return session.scalar(
        select(Image)
        .where(Image.id == image_id)
        .options(selectinload(Image.study).selectinload(Study.patient))
    )


def latest_inference(session: Session, image_id: int) -> Inference | None:
    """The newest successful inference of an image (findings loaded), or ``None``."""
    return session.scalar(
        select(Inference)
        .where(Inference.image_id == image_id, Inference.status == InferenceStatus.SUCCEEDED.value)
        .order_by(Inference.finished_at.desc(), Inference.id.desc())
        .options(selectinload(Inference.findings))
        .limit(1)
    )


def latest_failure(session: Session, image_id: int) -> str | None:
    """The error message of the image's newest failed inference; ``None`` when none failed (or the
    newest failure has no message)."""
    return session.scalar(
        select(Inference.error)
        .where(Inference.image_id == image_id, Inference.status == InferenceStatus.FAILED.value)
        .order_by(Inference.id.desc())
        .limit(1)
    )


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """A model (name and version) and how many successful inferences it made."""

    name: str
    version: str
    count: int


def models_in_use(session: Session) -> list[ModelUsage]:
    """Every model that analysed an image successfully, with its count, by name then version."""
    rows = session.execute(
        select(Inference.model_name, Inference.model_version, func.count(Inference.id))
        .where(Inference.status == InferenceStatus.SUCCEEDED.value)
        .group_by(Inference.model_name, Inference.model_version)
        .order_by(Inference.model_name, Inference.model_version)
    ).all()
    return [ModelUsage(name, version, int(count)) for name, version, count in rows]


def image_inferences(session: Session, image_id: int) -> list[Inference]:
    """Every inference of an image (any status), oldest first."""
    return list(
        session.scalars(select(Inference).where(Inference.image_id == image_id).order_by(Inference.id.asc()))
    )


def image_findings(
    session: Session, image_id: int, *, inference_id: int | None = None
) -> tuple[Inference | None, list[FindingRecord]]:
    """The findings of ``inference_id`` (which must belong to the image and have succeeded), or of the
    newest successful inference; ``(None, [])`` when the image has none.

    Raises:
        NotFound: no such image, or ``inference_id`` is not a successful inference of this image.
    """
    if session.get(Image, image_id) is None:
        raise NotFound(f"no image with id {image_id}")
    if inference_id is None:
        inference = latest_inference(session, image_id)
    else:
        inference = session.get(Inference, inference_id)
        if (
            inference is None
            or inference.image_id != image_id
            or inference.status != InferenceStatus.SUCCEEDED.value
        ):
            raise NotFound(f"image {image_id} has no successful inference with id {inference_id}")
    return inference, (list(inference.findings) if inference is not None else [])


def latest_triage(session: Session, image_id: int) -> TriageRecord | None:
    return session.scalar(
        select(TriageRecord)
        .where(TriageRecord.image_id == image_id)
        .order_by(TriageRecord.computed_at.desc(), TriageRecord.id.desc())
        .limit(1)
    )


def image_reviews(session: Session, image_id: int) -> list[Review]:
    """Reviews of an image, oldest first, with reviewers and findings loaded."""
    return list(
        session.scalars(
            select(Review)
            .where(Review.image_id == image_id)
            .order_by(Review.id.asc())
            .options(selectinload(Review.reviewer), selectinload(Review.findings))
        )
    )

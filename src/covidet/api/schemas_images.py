"""Response schemas of ``/api/v1/images``: the upload's answer, an image's metadata, its findings,
and the report formats.

Shared building blocks (error body, patient reference, AI summary) live in :mod:`covidet.api.schemas`;
these are the image resource's own. The JSON shapes are a promise to clients (docs/api.md, docs/upload.md).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from covidet import DISCLAIMER
from covidet.api.schemas import AiPublic, PatientRef

__all__ = [
    "FindingPublic",
    "FindingsPublic",
    "ImagePublic",
    "ImageUploadPublic",
    "InferencePublic",
    "ReportFormat",
    "ReviewSummaryPublic",
    "TriagePublic",
]


class ImageUploadPublic(BaseModel):
    """An accepted upload. IDs are covidet's own; ``patient_key`` is the identifier the device sent
    (the DICOM PatientID, or the ``patient_id`` form field of a PNG/JPEG)."""

    image_id: int
    study_id: int
    patient_id: int
    patient_key: str
    sop_instance_uid: str = Field(description="DICOM SOP Instance UID (derived from the bytes for PNG/JPEG)")
    media_type: str = Field(description="application/dicom, image/png or image/jpeg, detected from content")
    duplicate: bool = Field(description="true when the image was already stored: nothing new was written")
    status: str = Field(description="queued (waiting for analysis), analysed or failed")
    disclaimer: str = DISCLAIMER


class TriagePublic(BaseModel):
    """The newest triage of an image: priority, the rule that decided it and why."""

    priority: str
    rule: str
    news2_partial: int | None
    reasons: list[str]
    computed_at: datetime


class InferencePublic(BaseModel):
    """One run of one model version on the image (any status)."""

    id: int
    model_name: str
    model_version: str
    status: str
    attempts: int
    error: str | None
    label: str | None
    started_at: datetime
    finished_at: datetime | None


class ReviewSummaryPublic(BaseModel):
    id: int
    reviewer: str
    status: str
    label: str | None
    signed_at: datetime | None


class ImagePublic(BaseModel):
    """An image's metadata, its study and patient, its newest AI result and triage, all inferences
    and all reviews. ``rows`` x ``columns`` are the pixel size (boxes are in these pixels)."""

    id: int
    study_id: int
    study_instance_uid: str
    patient: PatientRef
    sop_instance_uid: str
    sop_class_uid: str | None
    media_type: str
    modality: str | None
    transfer_syntax_uid: str | None
    rows: int | None
    columns: int | None
    size_bytes: int
    original_filename: str | None
    source_device_id: int | None
    received_at: datetime
    status: str
    priority: str | None
    priority_updated_at: datetime | None
    ai: AiPublic | None
    triage: TriagePublic | None
    inferences: list[InferencePublic]
    reviews: list[ReviewSummaryPublic]
    disclaimer: str = DISCLAIMER


class FindingPublic(BaseModel):
    """One AI finding: ``box`` is ``[x1, y1, x2, y2]`` in original-image pixels, top-left origin."""

    id: int
    label: str
    score: float
    box: list[float] = Field(min_length=4, max_length=4)


class FindingsPublic(BaseModel):
    """The findings of one successful inference (the newest unless one was asked for); ``inference_id``
    is null, and ``findings`` empty, when the image has no successful analysis yet."""

    image_id: int
    inference_id: int | None
    model_name: str | None
    model_version: str | None
    decision_rule: str | None
    threshold: float | None
    label: str | None
    probabilities: dict[str, float] | None
    findings: list[FindingPublic]
    disclaimer: str = DISCLAIMER


class ReportFormat(StrEnum):
    FHIR = "fhir"
    DICOM = "dicom"

"""Inference, triage and alert rows: what the analysis worker writes, and the readings of them that the
worker's triage and the reports need.

Contract: every function takes a :class:`~sqlalchemy.orm.Session` and never commits (the caller's
``with db.session(write=True)`` does, so one job step stays one transaction). Nothing here computes a
clinical score: the worker runs :func:`covidet.assessment.triage.triage` and hands the outcome to
:func:`record_triage`. One inference exists per (image, model name, model version); see
:mod:`covidet.worker.analysis` for the job that relies on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from covidet.domain import Assessment, Box, Finding, Label, VitalSign
from covidet.store.models import (
    Alert,
    FindingRecord,
    Image,
    ImageStatus,
    Inference,
    InferenceStatus,
    Study,
    TriageRecord,
    VitalSignRecord,
    utcnow,
)

__all__ = [
    "StartedInference",
    "add_alert",
    "analysed_image_ids_of_patient",
    "as_vital_sign",
    "get_inference",
    "inference_assessment",
    "inference_findings",
    "mark_image_failed",
    "newest_analysed_image_of_study",
    "queued_image_ids",
    "record_inference_failure",
    "record_inference_result",
    "record_triage",
    "start_inference",
    "vital_rows_by_ids",
    "vital_rows_since",
]

#: Longest failure reason kept on an inference (the column is text; a traceback may be huge).
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True, slots=True)
class StartedInference:
    """One started attempt: the image, its patient (database id), its stored file (relative path in
    the image store) and its running inference with the attempt number (1 for the first)."""

    image_id: int
    patient_id: int
    path: str
    inference_id: int
    attempt: int


# ---------------------------------------------------------------------------------------- inferences


def start_inference(
    session: Session, image_id: int, *, model_name: str, model_version: str
) -> StartedInference | int | None:
    """Mark the (image, model) inference running and count the attempt (creating the row on the first).

    Returns the started attempt; the id of an inference of this model that already succeeded (a
    redelivered job, nothing to do); or ``None`` when there is no image ``image_id``.
    """
    image = session.get(Image, image_id)
    if image is None:
        return None
    inference = session.scalar(
        select(Inference).where(
            Inference.image_id == image_id,
            Inference.model_name == model_name,
            Inference.model_version == model_version,
        )
    )
    if inference is not None and inference.status == InferenceStatus.SUCCEEDED.value:
        return int(inference.id)
    if inference is None:
        inference = Inference(image_id=image_id, model_name=model_name, model_version=model_version)
        session.add(inference)
    inference.status = InferenceStatus.RUNNING.value
    inference.attempts = (inference.attempts or 0) + 1
    inference.started_at = utcnow()
    inference.error = None
    session.flush()
    return StartedInference(image.id, image.study.patient_id, image.path, inference.id, inference.attempts)


def record_inference_result(
    session: Session,
    inference_id: int,
    *,
    findings: Sequence[Finding],
    assessment: Assessment,
    decision_rule: str,
    read_seconds: float,
    detect_seconds: float,
) -> None:
    """Store the findings and the image assessment on inference ``inference_id``, mark it succeeded and
    its image ``analysed``. Raises :class:`LookupError` when the inference is gone."""
    inference = session.get(Inference, inference_id)
    if inference is None:
        raise LookupError(f"no inference with id {inference_id}")
    inference.findings = [
        FindingRecord(
            label=str(f.label), score=float(f.score), x1=f.box.x1, y1=f.box.y1, x2=f.box.x2, y2=f.box.y2
        )
        for f in findings
    ]
    inference.label = str(assessment.label)
    inference.probabilities = {str(k): float(v) for k, v in assessment.probabilities.items()}
    inference.threshold = float(assessment.threshold)
    inference.decision_rule = decision_rule
    inference.read_seconds = read_seconds
    inference.detect_seconds = detect_seconds
    inference.status = InferenceStatus.SUCCEEDED.value
    inference.finished_at = utcnow()
    image = session.get(Image, inference.image_id)
    if image is not None:
        image.status = ImageStatus.ANALYSED.value


def record_inference_failure(
    session: Session, inference_id: int, image_id: int, reason: str, *, final: bool
) -> None:
    """Mark inference ``inference_id`` failed with ``reason`` (cut to :data:`MAX_ERROR_CHARS`); when
    ``final``, the image too (no retry follows). Missing rows are skipped."""
    inference = session.get(Inference, inference_id)
    if inference is not None:
        inference.status = InferenceStatus.FAILED.value
        inference.error = reason[:MAX_ERROR_CHARS]
        inference.finished_at = utcnow()
    if final:
        mark_image_failed(session, image_id)


def mark_image_failed(session: Session, image_id: int) -> None:
    """Mark image ``image_id`` ``failed`` (given up on); a missing image is skipped."""
    image = session.get(Image, image_id)
    if image is not None:
        image.status = ImageStatus.FAILED.value


def get_inference(session: Session, inference_id: int) -> Inference | None:
    """Inference ``inference_id`` (any status), or ``None``."""
    return session.get(Inference, inference_id)


def inference_findings(inference: Inference) -> list[Finding]:
    """The stored findings of ``inference`` as domain findings (boxes in original-image pixels)."""
    return [Finding(Box(f.x1, f.y1, f.x2, f.y2), Label(f.label), f.score) for f in inference.findings]


def inference_assessment(inference: Inference) -> Assessment:
    """The stored image-level assessment of a succeeded ``inference`` (threshold 0.5 when unrecorded).

    Raises:
        ValueError: the inference has no label (it has not succeeded).
    """
    if inference.label is None:
        raise ValueError(f"inference {inference.id} has no assessment (status {inference.status})")
    return Assessment(
        label=Label(inference.label),
        probabilities={Label(k): v for k, v in (inference.probabilities or {}).items()},
        threshold=float(inference.threshold or 0.5),
    )


# ------------------------------------------------------------------------------------ images to do


def queued_image_ids(session: Session) -> list[int]:
    """Ids of the images still ``queued`` (accepted, not analysed yet), oldest first."""
    return list(
        session.scalars(select(Image.id).where(Image.status == ImageStatus.QUEUED.value).order_by(Image.id))
    )


def analysed_image_ids_of_patient(session: Session, patient_id: int, *, since: datetime) -> list[int]:
    """Ids of the patient's ``analysed`` images received at or after ``since`` (their triage may change
    when new vital signs arrive)."""
    return list(
        session.scalars(
            select(Image.id)
            .join(Study, Image.study_id == Study.id)
            .where(
                Study.patient_id == patient_id,
                Image.status == ImageStatus.ANALYSED.value,
                Image.received_at >= since,
            )
        )
    )


def newest_analysed_image_of_study(session: Session, study_instance_uid: str) -> int | None:
    """Id of the newest ``analysed`` image of the study with ``study_instance_uid``, or ``None``."""
    image_id = session.scalar(
        select(Image.id)
        .join(Study, Image.study_id == Study.id)
        .where(Study.study_instance_uid == study_instance_uid, Image.status == ImageStatus.ANALYSED.value)
        .order_by(Image.received_at.desc())
        .limit(1)
    )
    return None if image_id is None else int(image_id)


# ------------------------------------------------------------------------------------- vital signs


def vital_rows_since(session: Session, patient_id: int, since: datetime) -> list[VitalSignRecord]:
    """The patient's vital-sign rows measured at or after ``since``, oldest first (triage's window)."""
    return list(
        session.scalars(
            select(VitalSignRecord)
            .where(VitalSignRecord.patient_id == patient_id, VitalSignRecord.measured_at >= since)
            .order_by(VitalSignRecord.measured_at)
        )
    )


def vital_rows_by_ids(session: Session, ids: Sequence[int]) -> list[VitalSignRecord]:
    """The vital-sign rows with these ids (those a triage record used), in id order; ``[]`` for none."""
    if not ids:
        return []
    return list(
        session.scalars(
            select(VitalSignRecord).where(VitalSignRecord.id.in_(ids)).order_by(VitalSignRecord.id)
        )
    )


def as_vital_sign(row: VitalSignRecord, patient_key: str) -> VitalSign:
    """A stored vital-sign row as the domain value, for the patient known to devices as ``patient_key``."""
    return VitalSign(
        patient_id=patient_key,
        measured_at=row.measured_at,
        spo2_percent=row.spo2_percent,
        temperature_c=row.temperature_c,
        heart_rate_per_min=row.heart_rate_per_min,
        respiratory_rate_per_min=row.respiratory_rate_per_min,
        systolic_bp_mmhg=row.systolic_bp_mmhg,
    )


# ------------------------------------------------------------------------------------ triage, alerts


def record_triage(
    session: Session,
    image: Image,
    *,
    inference_id: int,
    priority: str,
    rule: str,
    news2_partial: int | None,
    reasons: Sequence[str],
    vital_sign_ids: Sequence[int],
    now: datetime,
) -> int:
    """Add a triage record of ``image`` (the outcome of one triage) and make ``priority`` the image's
    current one, updated at ``now``; returns the record's id."""
    record = TriageRecord(
        image_id=image.id,
        inference_id=inference_id,
        priority=priority,
        rule=rule,
        news2_partial=news2_partial,
        reasons=list(reasons),
        vital_sign_ids=list(vital_sign_ids),
    )
    session.add(record)
    session.flush()
    image.priority = priority
    image.priority_updated_at = now
    return int(record.id)


def add_alert(
    session: Session, *, image_id: int, patient_id: int, triage_id: int, priority: str, reasons: Sequence[str]
) -> int:
    """Raise an alert for the triage record ``triage_id`` of ``image_id``; returns the alert's id."""
    alert = Alert(
        image_id=image_id,
        patient_id=patient_id,
        triage_id=triage_id,
        priority=priority,
        reasons=list(reasons),
    )
    session.add(alert)
    session.flush()
    return int(alert.id)

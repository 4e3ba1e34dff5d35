"""What the image viewer (``/images/{id}``) shows, read from the store in one session.

Contract: :func:`image_view` returns ``None`` for an unknown image, else an :class:`ImageView` of
plain values (no ORM objects): the image and its patient, the newest successful AI result with its
boxes (highest score first), the error of the newest failed analysis, the newest triage, the vital
sign trend (the latest 200 readings), the signed reviews, this reader's draft and the drafts of
others, and the reading-room values of :func:`covidet.web.review_view.reading_room_view`. Data comes
from the same query functions as the API (:mod:`covidet.store.review_queries`).
"""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict

from covidet.store import review_queries as rq
from covidet.store import study_queries as sq
from covidet.store.db import Database
from covidet.web.charts import TrendChart, trend_charts
from covidet.web.review_view import ReadingRoomView, ReviewView, reading_room_view, review_view

__all__ = ["AiView", "BoxView", "ImageInfo", "ImageView", "PatientInfo", "TriageView", "image_view"]

#: The vital-sign trend draws at most this many readings (the latest).
TREND_READINGS = 200


class ImageInfo(TypedDict):
    id: int
    study_id: int
    study_instance_uid: str
    sop_instance_uid: str
    media_type: str
    modality: str | None
    rows: int | None
    columns: int | None
    received_at: datetime
    status: str
    priority: str | None


class PatientInfo(TypedDict):
    id: int
    key: str
    name: str | None


class AiView(TypedDict):
    """The newest successful inference; ``score`` is the AI score of its label (one number per
    finding, as the worklist and the triage show it); ``probabilities`` highest first."""

    inference_id: int
    label: str | None
    score: float | None
    probabilities: list[tuple[str, float]]
    model_name: str
    model_version: str
    decision_rule: str | None
    threshold: float | None
    finished_at: datetime | None


class BoxView(TypedDict):
    """A detected box ``[x1, y1, x2, y2]`` in original-image pixels."""

    id: int
    label: str
    score: float
    box: list[float]


class TriageView(TypedDict):
    priority: str
    rule: str
    reasons: list[str]
    computed_at: datetime
    news2_partial: int | None


class ImageView(ReadingRoomView):
    image: ImageInfo
    patient: PatientInfo
    ai: AiView | None
    failure: str | None
    findings: list[BoxView]
    triage: TriageView | None
    charts: list[TrendChart]
    vitals_total: int
    signed: list[ReviewView]
    draft: ReviewView | None
    other_drafts: list[ReviewView]


def image_view(db: Database, image_id: int, user_id: int) -> ImageView | None:
    """The viewer's values for image ``image_id`` as reader ``user_id`` sees it, or ``None``."""
    with db.session() as session:
        image = rq.get_image(session, image_id)
        if image is None:
            return None
        patient = image.study.patient
        inference = rq.latest_inference(session, image_id)
        findings = sorted(inference.findings, key=lambda f: -f.score) if inference is not None else []
        triage = rq.latest_triage(session, image_id)
        readings, vitals_total = rq.patient_vitals(session, patient.id, limit=TREND_READINGS)
        latest = rq.latest_vitals(session, [patient.id]).get(patient.id, {})
        reviews = [review_view(r) for r in rq.image_reviews(session, image_id)]
        failed = sq.latest_failure(session, image_id)
        ai: AiView | None = None
        if inference is not None:
            probabilities = inference.probabilities or {}
            ai = {
                "inference_id": inference.id,
                "label": inference.label,
                "score": probabilities.get(inference.label) if inference.label else None,
                "probabilities": sorted(probabilities.items(), key=lambda item: -float(item[1])),
                "model_name": inference.model_name,
                "model_version": inference.model_version,
                "decision_rule": inference.decision_rule,
                "threshold": inference.threshold,
                "finished_at": inference.finished_at,
            }
        return ImageView(
            image={
                "id": image.id,
                "study_id": image.study_id,
                "study_instance_uid": image.study.study_instance_uid,
                "sop_instance_uid": image.sop_instance_uid,
                "media_type": image.media_type,
                "modality": image.modality,
                "rows": image.rows,
                "columns": image.columns,
                "received_at": image.received_at,
                "status": image.status,
                "priority": image.priority,
            },
            patient={"id": patient.id, "key": patient.patient_key, "name": patient.name},
            ai=ai,
            failure=failed,
            findings=[
                {"id": f.id, "label": f.label, "score": f.score, "box": [f.x1, f.y1, f.x2, f.y2]}
                for f in findings
            ],
            triage={
                "priority": triage.priority,
                "rule": triage.rule,
                "reasons": list(triage.reasons or []),
                "computed_at": triage.computed_at,
                "news2_partial": triage.news2_partial,
            }
            if triage is not None
            else None,
            charts=trend_charts(readings, latest),
            vitals_total=vitals_total,
            signed=[r for r in reviews if r["status"] == "signed"],
            draft=next((r for r in reviews if r["status"] == "draft" and r["reviewer_id"] == user_id), None),
            other_drafts=[r for r in reviews if r["status"] == "draft" and r["reviewer_id"] != user_id],
            **reading_room_view(session, image, reviews, user_id),
        )

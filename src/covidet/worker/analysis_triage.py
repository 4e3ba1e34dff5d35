"""Triage of analysed images: the image's newest AI result and the patient's recent vital signs →
priority and reasons (:func:`covidet.assessment.triage.triage`), stored, with an alert when the image
becomes urgent.

Contract: :func:`triage_image` stores a new triage record only when the priority or the reasons changed
(so re-triage after every vital sign does not grow the history), raises an alert only on the change to
urgent, and publishes ``priority`` (and ``alert``) events after the transaction committed.
The rows are read and written through :mod:`covidet.store.analysis_queries`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from covidet.assessment.result import TriageResult, is_alert
from covidet.assessment.thresholds import TriageThresholds
from covidet.assessment.triage import triage
from covidet.store import analysis_queries as rows
from covidet.store.db import Database
from covidet.store.study_queries import get_image, latest_inference, latest_triage
from covidet.worker.analysis_events import AnalysisEvents

__all__ = ["triage_image"]

# The job's log lines keep the logger name they had before the split (operators filter on it).
logger = logging.getLogger("covidet.worker.analysis")


def triage_image(
    db: Database,
    thresholds: TriageThresholds,
    events: AnalysisEvents,
    image_id: int,
    *,
    now: datetime | None = None,
) -> TriageResult | None:
    """(Re)compute the priority of an analysed image from its findings and the patient's vitals in the
    window of ``thresholds``; returns the triage result, or ``None`` when the image does not exist or
    has no successful inference yet."""
    now = now or datetime.now(UTC)
    window = timedelta(minutes=float(thresholds.window_minutes))
    with db.session(write=True) as session:
        image = get_image(session, image_id)
        if image is None:
            return None
        inference = latest_inference(session, image_id)
        if inference is None:
            return None
        patient = image.study.patient
        vitals = rows.vital_rows_since(session, patient.id, now - window)
        result = triage(
            rows.inference_assessment(inference),
            rows.inference_findings(inference),
            [rows.as_vital_sign(r, patient.patient_key) for r in vitals],
            now=now,
            image_width=image.columns,
            thresholds=thresholds,
        )
        previous = latest_triage(session, image_id)
        priority = str(result.priority)
        if previous is not None and previous.priority == priority and previous.reasons == result.reasons:
            return result
        triage_id = rows.record_triage(
            session,
            image,
            inference_id=inference.id,
            priority=priority,
            rule=result.rule,
            news2_partial=result.news2_partial,
            reasons=result.reasons,
            vital_sign_ids=[r.id for r in vitals],
            now=now,
        )
        alert_id = None
        if is_alert(result) and (previous is None or previous.priority != priority):
            alert_id = rows.add_alert(
                session,
                image_id=image_id,
                patient_id=patient.id,
                triage_id=triage_id,
                priority=priority,
                reasons=result.reasons,
            )
        patient_id = patient.id
    logger.info("image %d priority %s (%s): %s", image_id, priority, result.rule, "; ".join(result.reasons))
    events.priority(image_id, patient_id, priority)
    if alert_id is not None:
        logger.warning("ALERT %d: image %d is urgent: %s", alert_id, image_id, "; ".join(result.reasons))
        events.alert(alert_id, image_id, patient_id, priority=priority, reasons=result.reasons)
    return result

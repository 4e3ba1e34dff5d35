"""The analysis job: detector + triage for one accepted image, idempotent and retried.

``Analyzer.analyse(image_id)`` reads the stored image, runs the detector (the bundle named in
settings, loaded once per process), stores an :class:`~covidet.store.models.Inference` with its
findings, then triages the image with the patient's recent vital signs. One inference exists per
(image, model name, model version): running the job again for an analysed image does nothing, and a
job that crashed half-way is taken over by the next attempt. ``Analyzer.retriage_patient`` is called
when new vital signs arrive so that a priority follows the patient's condition.
``Analyzer.analyse_many(image_ids)`` does the same for several waiting images with one detector call
(the in-process queue hands a worker thread up to ``settings.analysis_batch_size`` waiting images).

Failures are recorded on the inference (``error``, ``attempts``). An unreadable image fails for good
at once (retrying cannot help); anything else is retried with exponential backoff up to
``settings.analysis_max_attempts`` tries, then the image is marked ``failed``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from covidet import DISCLAIMER
from covidet.config import Settings
from covidet.domain import Assessment, Box, Finding, Label, VitalSign
from covidet.imaging import XRayImage
from covidet.imaging.reader import ImageReadError, read_image
from covidet.ingest.storage import ImageStore
from covidet.store.db import Database
from covidet.store.models import (
    Alert,
    FindingRecord,
    Image,
    ImageStatus,
    Inference,
    InferenceStatus,
    TriageRecord,
    VitalSignRecord,
    utcnow,
)
from covidet.worker.events import EventPublisher

__all__ = ["AnalysisError", "Analyzer", "analyse_batch_with_retries", "analyse_with_retries"]

logger = logging.getLogger(__name__)


class AnalysisError(Exception):
    """An analysis attempt failed. ``retryable`` is false when trying again cannot help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class _Job:
    """One started attempt: the image, where it is stored, and its running inference."""

    image_id: int
    patient_id: int
    path: str
    inference_id: int
    attempt: int


def _vital(row: VitalSignRecord, patient_key: str) -> VitalSign:
    return VitalSign(
        patient_id=patient_key,
        measured_at=row.measured_at,
        spo2_percent=row.spo2_percent,
        temperature_c=row.temperature_c,
        heart_rate_per_min=row.heart_rate_per_min,
        respiratory_rate_per_min=row.respiratory_rate_per_min,
        systolic_bp_mmhg=row.systolic_bp_mmhg,
    )


class Analyzer:
    """Everything one worker process needs: database, image store, detector, triage thresholds, events.

    ``predictor`` may be given (tests, benchmarks); otherwise the bundle of ``settings.model`` (or the
    shipped one) is loaded on first use, once, under a lock.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: ImageStore,
        *,
        events: EventPublisher | None = None,
        predictor: Any | None = None,
        thresholds: Any | None = None,
    ) -> None:
        from covidet.assessment.triage import TriageThresholds

        self.settings = settings
        self.db = db
        self.store = store
        self.events = events
        # Unknown names or inconsistent values fail here, at start, not at the first triage.
        self.thresholds = thresholds or TriageThresholds(**getattr(settings, "triage_thresholds", {}))
        self._predictor = predictor
        self._lock = threading.Lock()

    @property
    def predictor(self) -> Any:
        with self._lock:
            if self._predictor is None:
                from covidet.detection.predictor import Predictor

                if self.settings.threads:
                    import torch

                    torch.set_num_threads(self.settings.threads)
                self._predictor = Predictor.from_bundle(self.settings.model, device=self.settings.device)
            return self._predictor

    # ------------------------------------------------------------------------------------- analysis

    def analyse(self, image_id: int) -> int | None:
        """Analyse one image; returns the inference id (``None`` if the image does not exist).

        Raises:
            AnalysisError: the attempt failed (already recorded on the inference).
        """
        outcome = self.analyse_many([image_id])[image_id]
        if isinstance(outcome, AnalysisError):
            raise outcome
        return outcome

    def analyse_many(self, image_ids: Sequence[int]) -> dict[int, int | AnalysisError | None]:
        """One attempt at each image, with one detector call for all of them; never raises.

        Returns, per image id: the inference id, ``None`` when the image does not exist, or the
        :class:`AnalysisError` of a failed attempt (already recorded on its inference). Images of the
        same size share forward passes (:meth:`Predictor.predict` batches them), which is where a backlog
        is worked through faster (``benchmarks/worker_batch.py``). If the detector fails on the batch,
        each image is tried alone in the same attempt, so one image that breaks the detector fails only
        itself.
        """
        predictor = self.predictor
        outcomes: dict[int, int | AnalysisError | None] = {}
        started: list[tuple[_Job, XRayImage, float]] = []
        for image_id in dict.fromkeys(image_ids):  # a redelivered id in the same batch runs once
            job = self._start(image_id, predictor)
            if not isinstance(job, _Job):
                outcomes[image_id] = job
                continue
            began = time.perf_counter()
            try:
                xray = read_image(self.store.path(job.path), name=f"image {image_id}")
            except ImageReadError as exc:
                outcomes[image_id] = self._fail(job, str(exc), final=True)
                continue
            except OSError as exc:
                outcomes[image_id] = self._fail(job, f"cannot read stored file: {exc}", final=False)
                continue
            started.append((job, xray, time.perf_counter() - began))
        if not started:
            return outcomes
        try:
            xrays = [xray for _, xray, _ in started]
            predictions: list[Any] = predictor.predict(xrays, batch_size=len(xrays))
        except Exception as exc:
            if len(started) == 1:
                predictions = [exc]
            else:
                logger.warning("detector failed on a batch of %d (%r); trying each alone", len(started), exc)
                predictions = [self._predict_alone(predictor, xray) for _, xray, _ in started]
        for (job, _, read_seconds), prediction in zip(started, predictions, strict=True):
            if isinstance(prediction, Exception):
                final = job.attempt >= self.settings.analysis_max_attempts
                outcomes[job.image_id] = self._fail(job, f"detector failed: {prediction!r}", final=final)
            else:
                outcomes[job.image_id] = self._finish(job, predictor, prediction, read_seconds)
        return outcomes

    @staticmethod
    def _predict_alone(predictor: Any, xray: XRayImage) -> Any:
        try:
            return predictor.predict([xray])[0]
        except Exception as exc:
            return exc

    def _start(self, image_id: int, predictor: Any) -> _Job | int | None:
        """Mark the (image, model) inference running and count the attempt; returns the job, or the id
        of an inference that already succeeded (a redelivery), or ``None`` for an unknown image."""
        with self.db.session(write=True) as session:
            image = session.get(Image, image_id)
            if image is None:
                logger.warning("image %d does not exist; nothing to analyse", image_id)
                return None
            inference = session.scalar(
                select(Inference).where(
                    Inference.image_id == image_id,
                    Inference.model_name == predictor.name,
                    Inference.model_version == predictor.version,
                )
            )
            if inference is not None and inference.status == InferenceStatus.SUCCEEDED.value:
                logger.info("image %d already analysed by %s %s", image_id, predictor.name, predictor.version)
                return int(inference.id)
            if inference is None:
                inference = Inference(
                    image_id=image_id, model_name=predictor.name, model_version=predictor.version
                )
                session.add(inference)
            inference.status = InferenceStatus.RUNNING.value
            inference.attempts = (inference.attempts or 0) + 1
            inference.started_at = utcnow()
            inference.error = None
            session.flush()
            return _Job(image.id, image.study.patient_id, image.path, inference.id, inference.attempts)

    def _fail(self, job: _Job, reason: str, *, final: bool) -> AnalysisError:
        self._record_failure(job.inference_id, job.image_id, reason, final=final)
        return AnalysisError(reason, retryable=not final)

    def _finish(self, job: _Job, predictor: Any, prediction: Any, read_seconds: float) -> int:
        """Store the findings and assessment, publish, triage and forward; returns the inference id."""
        image_id = job.image_id
        with self.db.session(write=True) as session:
            inference = session.get(Inference, job.inference_id)
            assert inference is not None
            inference.findings = [
                FindingRecord(
                    label=str(f.label),
                    score=float(f.score),
                    x1=f.box.x1,
                    y1=f.box.y1,
                    x2=f.box.x2,
                    y2=f.box.y2,
                )
                for f in prediction.findings
            ]
            inference.label = str(prediction.assessment.label)
            inference.probabilities = {
                str(k): float(v) for k, v in prediction.assessment.probabilities.items()
            }
            inference.threshold = float(prediction.assessment.threshold)
            inference.decision_rule = str(predictor.card.get("decision", {}).get("rule", "max-score-v1"))
            inference.read_seconds = read_seconds
            inference.detect_seconds = float(prediction.seconds)
            inference.status = InferenceStatus.SUCCEEDED.value
            inference.finished_at = utcnow()
            image = session.get(Image, image_id)
            assert image is not None
            image.status = ImageStatus.ANALYSED.value
        logger.info(
            "image %d: %s (%s) by %s %s in %.2f s [%s]",
            image_id,
            prediction.assessment.label,
            ", ".join(f"{k} {v:.2f}" for k, v in prediction.assessment.probabilities.items()),
            predictor.name,
            predictor.version,
            prediction.seconds,
            DISCLAIMER,
        )
        self._publish(
            {
                "type": "analysed",
                "image_id": image_id,
                "patient_id": job.patient_id,
                "label": str(prediction.assessment.label),
                "model": {"name": predictor.name, "version": predictor.version},
                "disclaimer": DISCLAIMER,
            }
        )
        self.triage_image(image_id)
        self._archive(image_id)
        if getattr(self.settings, "pacs_host", None):
            self._forward(image_id)
        return job.inference_id

    def _archive(self, image_id: int) -> None:
        """Keep the AI SR in the image's study (served over DICOMweb and Q/R); never fails the analysis."""
        from covidet.archive import archive_ai_sr

        try:
            archive_ai_sr(self.db, self.store, image_id)
        except Exception:
            logger.exception("could not keep the AI SR of image %d", image_id)

    def _forward(self, image_id: int) -> None:
        """Send the DICOM report to the configured PACS; a PACS outage never fails the analysis."""
        from covidet.worker.reporting import forward_report

        try:
            forward_report(self.db, self.store, image_id, self.settings)
        except Exception as exc:
            logger.error("could not forward the report of image %d to the PACS: %s", image_id, exc)

    def _record_failure(self, inference_id: int, image_id: int, reason: str, *, final: bool) -> None:
        logger.warning("analysis of image %d failed%s: %s", image_id, " for good" if final else "", reason)
        with self.db.session(write=True) as session:
            inference = session.get(Inference, inference_id)
            if inference is not None:
                inference.status = InferenceStatus.FAILED.value
                inference.error = reason[:2000]
                inference.finished_at = utcnow()
            if final:
                image = session.get(Image, image_id)
                if image is not None:
                    image.status = ImageStatus.FAILED.value
        if final:
            self._publish({"type": "failed", "image_id": image_id, "reason": reason})

    def mark_failed(self, image_id: int, reason: str) -> None:
        """Give up on an image after its last retry."""
        with self.db.session(write=True) as session:
            image = session.get(Image, image_id)
            if image is not None:
                image.status = ImageStatus.FAILED.value
        self._publish({"type": "failed", "image_id": image_id, "reason": reason})

    # --------------------------------------------------------------------------------------- triage

    def triage_image(self, image_id: int, *, now: datetime | None = None) -> Any | None:
        """(Re)compute the priority of an analysed image from its findings and the patient's vitals.

        A new :class:`TriageRecord` is stored when the priority or the reasons changed; an alert is
        raised when the priority becomes urgent. Returns the triage result, or ``None`` when the image
        has no successful inference yet.
        """
        from covidet.assessment.triage import is_alert, triage

        now = now or datetime.now(UTC)
        window = timedelta(minutes=float(self.thresholds.window_minutes))
        with self.db.session(write=True) as session:
            image = session.get(Image, image_id)
            if image is None:
                return None
            inference = session.scalar(
                select(Inference)
                .where(Inference.image_id == image_id, Inference.status == InferenceStatus.SUCCEEDED.value)
                .order_by(Inference.finished_at.desc())
                .limit(1)
            )
            if inference is None:
                return None
            patient = image.study.patient
            rows = list(
                session.scalars(
                    select(VitalSignRecord)
                    .where(
                        VitalSignRecord.patient_id == patient.id,
                        VitalSignRecord.measured_at >= now - window,
                    )
                    .order_by(VitalSignRecord.measured_at)
                )
            )
            findings = [
                Finding(Box(f.x1, f.y1, f.x2, f.y2), Label(f.label), f.score) for f in inference.findings
            ]
            assessment = Assessment(
                label=Label(inference.label),
                probabilities={Label(k): v for k, v in (inference.probabilities or {}).items()},
                threshold=float(inference.threshold or 0.5),
            )
            result = triage(
                assessment,
                findings,
                [_vital(r, patient.patient_key) for r in rows],
                now=now,
                image_width=image.columns,
                thresholds=self.thresholds,
            )
            previous = session.scalar(
                select(TriageRecord)
                .where(TriageRecord.image_id == image_id)
                .order_by(TriageRecord.computed_at.desc(), TriageRecord.id.desc())
                .limit(1)
            )
            priority = str(result.priority)
            if previous is not None and previous.priority == priority and previous.reasons == result.reasons:
                return result
            record = TriageRecord(
                image_id=image_id,
                inference_id=inference.id,
                priority=priority,
                rule=result.rule,
                news2_partial=result.news2_partial,
                reasons=list(result.reasons),
                vital_sign_ids=[r.id for r in rows],
            )
            session.add(record)
            session.flush()
            image.priority = priority
            image.priority_updated_at = now
            alert_id = None
            became_urgent = is_alert(result) and (previous is None or previous.priority != priority)
            if became_urgent:
                alert = Alert(
                    image_id=image_id,
                    patient_id=patient.id,
                    triage_id=record.id,
                    priority=priority,
                    reasons=list(result.reasons),
                )
                session.add(alert)
                session.flush()
                alert_id = alert.id
            patient_id = patient.id
        logger.info(
            "image %d priority %s (%s): %s", image_id, priority, result.rule, "; ".join(result.reasons)
        )
        self._publish(
            {"type": "priority", "image_id": image_id, "patient_id": patient_id, "priority": priority}
        )
        if alert_id is not None:
            logger.warning("ALERT %d: image %d is urgent: %s", alert_id, image_id, "; ".join(result.reasons))
            self._publish(
                {
                    "type": "alert",
                    "alert_id": alert_id,
                    "image_id": image_id,
                    "patient_id": patient_id,
                    "priority": priority,
                    "reasons": list(result.reasons),
                    "disclaimer": DISCLAIMER,
                }
            )
        return result

    def retriage_patient(
        self, patient_id: int, *, now: datetime | None = None, within_hours: float = 24.0
    ) -> int:
        """Re-triage the patient's analysed images received in the last ``within_hours``: called when
        new vital signs arrive. Returns how many images were looked at."""
        now = now or datetime.now(UTC)
        from covidet.store.models import Study

        with self.db.session() as session:
            image_ids = list(
                session.scalars(
                    select(Image.id)
                    .join(Study, Image.study_id == Study.id)
                    .where(
                        Study.patient_id == patient_id,
                        Image.status == ImageStatus.ANALYSED.value,
                        Image.received_at >= now - timedelta(hours=within_hours),
                    )
                )
            )
        for image_id in image_ids:
            self.triage_image(image_id, now=now)
        return len(image_ids)

    def _publish(self, event: dict[str, Any]) -> None:
        if self.events is not None:
            self.events.publish(event)


def analyse_with_retries(analyzer: Analyzer, image_id: int, *, sleep: Any = time.sleep) -> int | None:
    """Run :meth:`Analyzer.analyse` with bounded exponential backoff (the in-process queue's policy)."""
    return analyse_batch_with_retries(analyzer, [image_id], sleep=sleep)[image_id]


def analyse_batch_with_retries(
    analyzer: Analyzer, image_ids: Sequence[int], *, sleep: Any = time.sleep
) -> dict[int, int | None]:
    """The first attempt at every image in one :meth:`Analyzer.analyse_many` call, then each image that
    failed in a retryable way alone, with bounded exponential backoff (the in-process queue's policy).

    Returns, per image id, the inference id, or ``None`` when the image does not exist or was given up
    on (then marked failed, its reason kept on the inference).
    """
    results: dict[int, int | None] = {}
    for image_id, outcome in analyzer.analyse_many(image_ids).items():
        results[image_id] = (
            _retry(analyzer, image_id, outcome, sleep) if isinstance(outcome, AnalysisError) else outcome
        )
    return results


def _retry(analyzer: Analyzer, image_id: int, error: AnalysisError, sleep: Any) -> int | None:
    """Retry ``image_id`` after its first attempt failed with ``error``."""
    settings = analyzer.settings
    delay = float(settings.analysis_retry_seconds)
    attempt = 1
    while error.retryable and attempt < settings.analysis_max_attempts:
        logger.info("retrying image %d in %.1f s (attempt %d failed)", image_id, delay, attempt)
        sleep(delay)
        delay *= 2
        attempt += 1
        try:
            return analyzer.analyse(image_id)
        except AnalysisError as exc:
            error = exc
    analyzer.mark_failed(image_id, str(error))
    return None

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

This module is the job itself (:class:`Analyzer`) and the public face of the analysis: the rows are
read and written by :mod:`covidet.store.analysis_queries`, triage is :mod:`covidet.worker.analysis_triage`,
the events :mod:`covidet.worker.analysis_events`, the in-process retry policy
:mod:`covidet.worker.analysis_retry`, and the detector port :mod:`covidet.worker.analysis_types`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from covidet import DISCLAIMER
from covidet.assessment.result import TriageResult
from covidet.assessment.thresholds import TriageThresholds
from covidet.config import Settings
from covidet.imaging import XRayImage
from covidet.imaging.reader import ImageReadError, read_image
from covidet.store import analysis_queries as rows
from covidet.store.analysis_queries import StartedInference
from covidet.store.db import Database
from covidet.store.files import ImageStore
from covidet.worker import analysis_triage
from covidet.worker.analysis_events import AnalysisEvents
from covidet.worker.analysis_retry import analyse_batch_with_retries, analyse_with_retries
from covidet.worker.analysis_types import AnalysisError, Detector, DetectorResult, decision_rule
from covidet.worker.events import EventPublisher

__all__ = ["AnalysisError", "Analyzer", "analyse_batch_with_retries", "analyse_with_retries"]

logger = logging.getLogger(__name__)

#: What one attempt at one image came to: the inference id, ``None`` (no such image) or the failure.
Outcome = int | AnalysisError | None


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
        predictor: Detector | None = None,
        thresholds: TriageThresholds | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.events = events
        # Unknown names or inconsistent values fail here, at start, not at the first triage.
        self.thresholds = thresholds or TriageThresholds(**getattr(settings, "triage_thresholds", {}))
        self._predictor = predictor
        self._lock = threading.Lock()

    @property
    def predictor(self) -> Detector:
        with self._lock:
            if self._predictor is None:
                from covidet.detection.predictor import Predictor

                if self.settings.threads:
                    import torch

                    torch.set_num_threads(self.settings.threads)
                self._predictor = Predictor.from_bundle(self.settings.model, device=self.settings.device)
            return self._predictor

    @property
    def _events(self) -> AnalysisEvents:
        """The analysis events, sent to :attr:`events` as it is now."""
        return AnalysisEvents(self.events)

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

    def analyse_many(self, image_ids: Sequence[int]) -> dict[int, Outcome]:
        """One attempt at each image, with one detector call for all of them; never raises.

        Returns, per image id: the inference id, ``None`` when the image does not exist, or the
        :class:`AnalysisError` of a failed attempt (already recorded on its inference). Images of the
        same size share forward passes (:meth:`Predictor.predict` batches them), which is where a backlog
        is worked through faster (``benchmarks/worker_batch.py``). If the detector fails on the batch,
        each image is tried alone in the same attempt, so one image that breaks the detector fails only
        itself.
        """
        predictor = self.predictor
        outcomes: dict[int, Outcome] = {}
        started: list[tuple[StartedInference, XRayImage, float]] = []
        for image_id in dict.fromkeys(image_ids):  # a redelivered id in the same batch runs once
            job = self._start(image_id, predictor)
            if not isinstance(job, StartedInference):
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
        predictions: Sequence[DetectorResult | Exception]
        try:
            xrays = [xray for _, xray, _ in started]
            predictions = predictor.predict(xrays, batch_size=len(xrays))
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
    def _predict_alone(predictor: Detector, xray: XRayImage) -> DetectorResult | Exception:
        try:
            return predictor.predict([xray])[0]
        except Exception as exc:
            return exc

    def _start(self, image_id: int, predictor: Detector) -> StartedInference | int | None:
        """Mark the (image, model) inference running and count the attempt; returns the job, or the id
        of an inference that already succeeded (a redelivery), or ``None`` for an unknown image."""
        with self.db.session(write=True) as session:
            job = rows.start_inference(
                session, image_id, model_name=predictor.name, model_version=predictor.version
            )
        if job is None:
            logger.warning("image %d does not exist; nothing to analyse", image_id)
        elif not isinstance(job, StartedInference):
            logger.info("image %d already analysed by %s %s", image_id, predictor.name, predictor.version)
        return job

    def _fail(self, job: StartedInference, reason: str, *, final: bool) -> AnalysisError:
        self._record_failure(job.inference_id, job.image_id, reason, final=final)
        return AnalysisError(reason, retryable=not final)

    def _finish(
        self, job: StartedInference, predictor: Detector, prediction: DetectorResult, read_seconds: float
    ) -> int:
        """Store the findings and assessment, publish, triage and forward; returns the inference id."""
        image_id = job.image_id
        assessment = prediction.assessment
        with self.db.session(write=True) as session:
            rows.record_inference_result(
                session,
                job.inference_id,
                findings=prediction.findings,
                assessment=assessment,
                decision_rule=decision_rule(predictor.card),
                read_seconds=read_seconds,
                detect_seconds=float(prediction.seconds),
            )
        logger.info(
            "image %d: %s (%s) by %s %s in %.2f s [%s]",
            image_id,
            assessment.label,
            ", ".join(f"{k} {v:.2f}" for k, v in assessment.probabilities.items()),
            predictor.name,
            predictor.version,
            prediction.seconds,
            DISCLAIMER,
        )
        self._events.analysed(
            image_id,
            job.patient_id,
            label=str(assessment.label),
            model_name=predictor.name,
            model_version=predictor.version,
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
        from covidet.reports.from_store import forward_report

        try:
            forward_report(self.db, self.store, image_id, self.settings)
        except Exception as exc:
            logger.error("could not forward the report of image %d to the PACS: %s", image_id, exc)

    def _record_failure(self, inference_id: int, image_id: int, reason: str, *, final: bool) -> None:
        logger.warning("analysis of image %d failed%s: %s", image_id, " for good" if final else "", reason)
        with self.db.session(write=True) as session:
            rows.record_inference_failure(session, inference_id, image_id, reason, final=final)
        if final:
            self._events.failed(image_id, reason)

    def mark_failed(self, image_id: int, reason: str) -> None:
        """Give up on an image after its last retry."""
        with self.db.session(write=True) as session:
            rows.mark_image_failed(session, image_id)
        self._events.failed(image_id, reason)

    # --------------------------------------------------------------------------------------- triage

    def triage_image(self, image_id: int, *, now: datetime | None = None) -> TriageResult | None:
        """(Re)compute the priority of an analysed image from its findings and the patient's vitals.

        A new :class:`~covidet.store.models.TriageRecord` is stored when the priority or the reasons
        changed; an alert is raised when the priority becomes urgent. Returns the triage result, or
        ``None`` when the image has no successful inference yet (see
        :func:`covidet.worker.analysis_triage.triage_image`).
        """
        return analysis_triage.triage_image(self.db, self.thresholds, self._events, image_id, now=now)

    def retriage_patient(
        self, patient_id: int, *, now: datetime | None = None, within_hours: float = 24.0
    ) -> int:
        """Re-triage the patient's analysed images received in the last ``within_hours``: called when
        new vital signs arrive. Returns how many images were looked at."""
        now = now or datetime.now(UTC)
        with self.db.session() as session:
            image_ids = rows.analysed_image_ids_of_patient(
                session, patient_id, since=now - timedelta(hours=within_hours)
            )
        for image_id in image_ids:
            self.triage_image(image_id, now=now)
        return len(image_ids)

"""Wiring of one covidet process: database, image store, analysis queue, ingest, events.

Every long-running command (``dicom-scp``, ``mqtt-ingest``, ``serve``, ``demo``) builds one
:class:`Runtime` from settings, so the choice between the embedded deployment (in-process analysis
threads) and the scaled one (Celery workers over Redis) is made in one place: ``settings.queue``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from covidet.config import Settings
from covidet.ingest.service import ImageIngest
from covidet.store.db import Database
from covidet.store.files import ImageStore
from covidet.worker.analysis import Analyzer, analyse_batch_with_retries
from covidet.worker.analysis_types import Detector
from covidet.worker.events import EventPublisher, InProcessEvents, RedisEvents
from covidet.worker.queue import AnalysisQueue, InProcessQueue, requeue_pending

__all__ = ["Runtime", "build_runtime"]

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    store: ImageStore
    queue: AnalysisQueue
    ingest: ImageIngest
    events: EventPublisher
    #: Runs in-process analysis jobs, and re-triage when vitals arrive (in both modes: triage is a few
    #: queries; the detector is loaded only by a process that analyses).
    analyzer: Analyzer

    def close(self) -> None:
        if isinstance(self.queue, InProcessQueue):
            self.queue.close()
        self.db.dispose()


def build_runtime(
    settings: Settings, *, db: Database | None = None, predictor: Detector | None = None, requeue: bool = True
) -> Runtime:
    """Build the process' parts from ``settings``; re-queue images accepted earlier and not analysed.

    ``predictor`` replaces the bundle named in settings (tests and benchmarks).
    """
    db = db or Database.from_settings(settings)
    store = ImageStore(settings.image_store_dir)
    events: EventPublisher
    if settings.queue == "celery":
        from covidet.worker.celery_app import CeleryQueue

        queue: AnalysisQueue = CeleryQueue(
            settings.redis_url, visibility_timeout=settings.celery_visibility_timeout
        )
        events = RedisEvents(settings.redis_url)
        analyzer = Analyzer(settings, db, store, events=events, predictor=predictor)
        logger.info("analysis jobs go to Celery workers over %s", settings.redis_url)
    else:
        events = InProcessEvents()
        analyzer = Analyzer(settings, db, store, events=events, predictor=predictor)
        bound = analyzer

        def handle(image_ids: list[int]) -> None:
            analyse_batch_with_retries(bound, image_ids)

        queue = InProcessQueue(
            handle, workers=settings.analysis_workers, max_batch=settings.analysis_batch_size
        )
        logger.info(
            "analysis runs in this process (%d thread(s), batches of up to %d waiting images)",
            settings.analysis_workers,
            settings.analysis_batch_size,
        )
    ingest = ImageIngest(
        db,
        store,
        queue,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        max_decode_bytes=settings.max_decode_bytes,
    )
    if requeue:
        requeue_pending(db, queue)
        _backfill_series_uids(db, store)
    return Runtime(settings, db, store, queue, ingest, events, analyzer)


def _backfill_series_uids(db: Database, store: ImageStore) -> None:
    """Images stored before revision 0004 get their series UID from their headers (once)."""
    from covidet.archive import backfill_series_uids

    try:
        filled = backfill_series_uids(db, store)
    except Exception:  # the archive view falls back to a derived UID; never block the start
        logger.exception("could not back-fill series UIDs")
        return
    if filled:
        logger.info("series UIDs of %d earlier images read from their headers", filled)
